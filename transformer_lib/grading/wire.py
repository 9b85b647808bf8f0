"""The produce/judge channel between the trusted grader and the process that holds a learner's code.

The grader (the *judge*) runs the exercises' tests; the learner's objects live in another process (the
*producer*: a sandboxed worker, or the child that ``check()`` forks). An :class:`Endpoint` on each side of a
pipe turns the other side's objects into proxies:

* values cross as plain data — a JSON header plus raw bytes: ``None``, bools, ints, floats, strings, lists,
  tuples, dicts, dtypes, devices, random generators and tensors (dtype, shape and the bytes of their
  elements). No pickle: a tensor the judge receives is rebuilt as a plain ``torch.Tensor``, so a subclass or
  a ``__torch_function__`` of the learner's never reaches it;
* a learner's function, class or object is a handle; calling it sends the call over the pipe;
* an ``nn.Module`` crosses as a *tree*: its ``torch.nn`` parts (``nn.Linear``, ``nn.LayerNorm`` …) are rebuilt
  on the judge's side with their parameters, so tests can read and load weights; every learner-written
  module becomes a :class:`RemoteModule` whose ``forward`` is a call. Parameters, buffers and modes are
  synchronised at every message, so a weight loaded on one side is the weight used on the other;
* autograd crosses too: a call whose inputs require grad is an ``autograd.Function``; its backward asks
  the other side for the gradients (in either direction, nested as deeply as the calls were);
* forward pre-hooks a test puts on a module are replayed with the arguments recorded where the call ran.

The judge's side is strict about what the producer may ask of it (:class:`ExportPolicy`): only objects it
handed over, no attribute that starts with ``_``, no callables except ``forward`` and the names a trusted
class lists in ``grading_exports``. Every header and tensor the judge reads is size-checked.

This module imports only the standard library and torch (it also runs inside the sandbox).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import os
import select
import struct
import time
import types
import weakref
from typing import Any, Callable

import torch
from torch import Tensor, nn

MAX_HEADER = 32 << 20  # bytes of one JSON header
MAX_FRAME = 512 << 20  # bytes of all the tensors of one message
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}
_MODULE_BASE_KEYS = frozenset(nn.Module().__dict__) | {"training"}


class PeerGone(BaseException):
    """The other side closed the channel or died (a BaseException: a test's ``except Exception`` can't hide it)."""


class PeerTimeout(BaseException):
    """The other side did not answer before the deadline."""


class ProtocolError(BaseException):
    """The other side sent something that is not a well-formed message."""


class PeerError(Exception):
    """The other side's code raised; ``kind`` is the exception's class name, ``description`` a short text."""

    def __init__(self, kind: str, message: str, description: str) -> None:
        super().__init__(description or f"{kind}: {message}")
        self.kind, self.message, self.description = kind, message, description


class PeerNotImplemented(PeerError, NotImplementedError):
    """The other side's code raised NotImplementedError (an exercise stub)."""


# ------------------------------------------------------------------------------------------------ framing


class Channel:
    """Length-prefixed frames over two file descriptors: header length, blob count, JSON, then each blob."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.closed = False

    def send(self, header: dict, blobs: list[bytes]) -> None:
        data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        parts = [struct.pack("!QI", len(data), len(blobs)), data]
        for b in blobs:
            parts += [struct.pack("!Q", len(b)), b]
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    n = os.write(self.wfd, view)
                    view = view[n:]
        except OSError as exc:
            self.closed = True
            raise PeerGone(f"the channel is closed ({exc})") from None

    def _read(self, n: int, deadline: float | None) -> bytes:
        chunks, got = [], 0
        while got < n:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.rfd], [], [], remaining)[0]:
                    raise PeerTimeout("no answer in time")
            try:
                chunk = os.read(self.rfd, min(n - got, 1 << 22))
            except OSError as exc:
                self.closed = True
                raise PeerGone(f"the channel is closed ({exc})") from None
            if not chunk:
                self.closed = True
                raise PeerGone("the other side closed the channel")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def recv(self, deadline: float | None = None) -> tuple[dict, list[bytes]]:
        size, count = struct.unpack("!QI", self._read(12, deadline))
        if size > MAX_HEADER or count > 1 << 20:
            raise ProtocolError(f"message header too large ({size} bytes, {count} blobs)")
        try:
            header = json.loads(self._read(size, deadline))
        except (ValueError, RecursionError):
            raise ProtocolError("message header is not valid JSON") from None
        if not isinstance(header, dict):
            raise ProtocolError("message header is not an object")
        blobs, total = [], 0
        for _ in range(count):
            (n,) = struct.unpack("!Q", self._read(8, deadline))
            total += n
            if total > MAX_FRAME:
                raise ProtocolError(f"message too large (over {MAX_FRAME >> 20} MiB of tensors)")
            blobs.append(self._read(n, deadline))
        return header, blobs


# ------------------------------------------------------------------------------------------------ policies


@dataclasses.dataclass
class ExportPolicy:
    """What one side lets the other do with its objects. ``strict`` is the judge's policy."""

    strict: bool

    def may_getattr(self, obj: Any, name: str) -> bool:
        return not self.strict or (isinstance(name, str) and not name.startswith("_"))

    def may_call_method(self, obj: Any, name: str) -> bool:
        if not self.strict:
            return True
        return not name.startswith("_") and name in getattr(type(obj), "grading_exports", ())

    def may_resolve(self, path: str) -> bool:
        """May a class or function named by the other side be looked up here?"""
        if not self.strict:
            return True
        parts = path.split(".")
        return parts[0] == "torch" and not any(p.startswith("_") for p in parts)


def _resolve(path: str) -> Any:
    """The object ``pkg.module:qualname`` or ``pkg.module.name`` names, or None."""
    module_name, _, qualname = path.partition(":")
    if not qualname:
        module_name, _, qualname = path.rpartition(".")
    try:
        import importlib

        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 — anything not importable here is simply not available
        return None
    return obj


def _path_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


def _torch_function_path(fn: Any) -> str | None:
    """'torch.nn.functional:relu' for a function of torch that can be named, else None."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__name__", "")
    if not isinstance(name, str) or not name or isinstance(fn, type):
        return None
    candidates = [m for m in (module, "torch", "torch.nn.functional") if isinstance(m, str)]
    for candidate in candidates:
        if (candidate == "torch" or candidate.startswith("torch.")) and _resolve(f"{candidate}:{name}") is fn:
            return f"{candidate}:{name}"
    return None


# ------------------------------------------------------------------------------------------------ proxies


class PeerObject:
    """A function, callable or object of the other side."""

    __slots__ = ("_tl_ep", "_tl_h", "_tl_name", "__weakref__")

    def __init__(self, ep: Endpoint, h: int, name: str) -> None:
        object.__setattr__(self, "_tl_ep", ep)
        object.__setattr__(self, "_tl_h", h)
        object.__setattr__(self, "_tl_name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tl_ep.call(self._tl_h, None, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._tl_ep.getattr(self._tl_h, name)

    def __repr__(self) -> str:
        return f"<{self._tl_name} (in the other process)>"

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self._tl_name


class PeerMethod(PeerObject):
    """A bound method of an object of the other side: ``(handle, name)``."""

    __slots__ = ("_tl_attr",)

    def __init__(self, ep: Endpoint, h: int, name: str) -> None:
        super().__init__(ep, h, name)
        object.__setattr__(self, "_tl_attr", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tl_ep.call(self._tl_h, self._tl_attr, args, kwargs)


class RemoteModule(nn.Module):
    """A module whose ``forward`` (and any attribute not mirrored here) lives in the other process."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            peer = self.__dict__.get("_tl_peer")
            if peer is None:
                raise
            ep, h = peer
            return ep.getattr(h, name)


class PeerClassBase:
    """Base of the classes that stand for a class of the other side; instantiating one is a call."""

    _tl_peer: tuple[Endpoint, int]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        ep, h = cls._tl_peer
        return ep.call(h, None, args, kwargs)


_REMOTE_CLASSES: dict[tuple[str, bool], type] = {}


def _remote_module_class(name: str) -> type:
    key = (name, True)
    if key not in _REMOTE_CLASSES:
        safe = name if name.isidentifier() else "RemoteModule"
        _REMOTE_CLASSES[key] = type(safe, (RemoteModule,), {"__module__": "transformer_lib.grading.wire"})
    return _REMOTE_CLASSES[key]


def _make_signature(spec: Any) -> inspect.Signature | None:
    try:
        params = []
        for name, kind, has_default in spec:
            default = None if has_default else inspect.Parameter.empty
            params.append(inspect.Parameter(str(name), inspect._ParameterKind(int(kind)), default=default))
        return inspect.Signature(params)
    except Exception:  # noqa: BLE001
        return None


def _signature_spec(fn: Any) -> list:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [["args", 2, False], ["kwargs", 4, False]]
    return [[p.name, int(p.kind), p.default is not inspect.Parameter.empty] for p in sig.parameters.values()]


# ------------------------------------------------------------------------------------------------ autograd


class _Bridge(torch.autograd.Function):
    """One call to the other side, differentiable: backward asks the other side for the input gradients."""

    @staticmethod
    def forward(ctx: Any, ep: Endpoint, request: dict, box: list, *inputs: Tensor) -> Any:  # type: ignore[override]
        value, tensors, gid, diff = ep._call_raw(request)
        box.append(value)
        ctx.ep, ctx.gid, ctx.n_inputs = ep, gid, len(inputs)
        ctx.diff = diff + [False]
        outputs = [t for t in tensors] + [torch.zeros(())]  # never empty: apply() needs an output
        ctx.mark_non_differentiable(*[t for t, d in zip(outputs, ctx.diff) if not d])
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        if ctx.gid is None:
            return (None, None, None) + (None,) * ctx.n_inputs
        sent = [g if d else None for g, d in zip(grads, ctx.diff)][:-1]
        result = ctx.ep._backward(ctx.gid, sent)
        result = list(result) + [None] * (ctx.n_inputs - len(result))
        return (None, None, None) + tuple(result[: ctx.n_inputs])


def _tensor_slots(value: Any, out: list) -> Any:
    """Replace each tensor in a decoded value by a placeholder index; collect the tensors in ``out``."""
    if isinstance(value, Tensor):
        out.append(value)
        return _Slot(len(out) - 1)
    if isinstance(value, list):
        return [_tensor_slots(v, out) for v in value]
    if isinstance(value, tuple):
        return tuple(_tensor_slots(v, out) for v in value)
    if isinstance(value, dict):
        return {k: _tensor_slots(v, out) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class _Slot:
    index: int


def _fill_slots(value: Any, tensors: tuple | list) -> Any:
    if isinstance(value, _Slot):
        return tensors[value.index]
    if isinstance(value, list):
        return [_fill_slots(v, tensors) for v in value]
    if isinstance(value, tuple):
        return tuple(_fill_slots(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _fill_slots(v, tensors) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ endpoint


_REFERENCE_KINDS = ("ref", "module", "class", "obj", "method", "fn")


class Endpoint:
    """One side of the channel: exports local objects by handle, mirrors the other side's, serves requests.

    ``strict`` (the judge) limits what the other side may ask (see :class:`ExportPolicy`) and what it may
    name. ``extra_ops`` maps more request names to handlers (the worker's ``exec`` and ``lookup``).
    """

    def __init__(self, channel: Channel, strict: bool, extra_ops: dict[str, Callable] | None = None) -> None:
        self.channel = channel
        self.policy = ExportPolicy(strict)
        self.strict = strict
        self.extra_ops = extra_ops or {}
        self.objects: dict[int, Any] = {}  # handle -> local object handed to the other side
        self._handle_of: dict[int, int] = {}  # id(object) -> handle
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self.mirrors: dict[int, nn.Module] = {}  # the other side's module nodes, rebuilt here
        self.optimizers: dict[int, Any] = {}
        self.peers: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self.trees: dict[int, nn.Module] = {}  # local module nodes exported as trees
        self.graphs: dict[int, tuple[list[Tensor], list[Tensor | None], int]] = {}
        self._gids = itertools.count(1)
        self._fingerprints: dict[tuple[str, int], tuple] = {}
        self.deadline: float | None = None
        self.dead = False

    # ---------------------------------------------------------------- handles

    def export(self, obj: Any) -> int:
        h = self._handle_of.get(id(obj))
        if h is not None and self.objects.get(h) is obj:
            return h
        h = next(self._ids)
        self.objects[h] = obj
        self._handle_of[id(obj)] = h
        return h

    def release_all(self) -> None:
        """Forget every exported object and graph (between exercises)."""
        self.objects.clear()
        self._handle_of.clear()
        self.trees.clear()
        self.graphs.clear()
        self._fingerprints.clear()
        self.mirrors.clear()
        self.optimizers.clear()
        self.peers.clear()

    # ---------------------------------------------------------------- encoding

    def encode(self, value: Any, blobs: list[bytes], grads: list[Tensor] | None = None, depth: int = 0) -> Any:
        if depth > 64:
            raise ValueError("the value is nested too deeply to send")
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return value if abs(value) < 1 << 62 else {"t": "bigint", "v": str(value)}
        if isinstance(value, float):
            return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
        if isinstance(value, Tensor):
            return self._encode_tensor(value, blobs, grads)
        if isinstance(value, torch.Size):
            return {"t": "tuple", "v": [int(x) for x in value]}
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {"t": kind, "v": [self.encode(v, blobs, grads, depth + 1) for v in value]}
        if isinstance(value, dict):
            items = [
                [self.encode(k, blobs, grads, depth + 1), self.encode(v, blobs, grads, depth + 1)]
                for k, v in value.items()
            ]
            return {"t": "dict", "v": items}
        if isinstance(value, torch.dtype):
            return {"t": "dtype", "v": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"t": "device", "v": str(value)}
        if isinstance(value, torch.Generator):
            blobs.append(bytes(value.get_state().numpy().tobytes()))
            return {"t": "gen", "b": len(blobs) - 1}
        peer = self._peer_handle(value)
        if peer is not None:
            return {"t": "ref", "h": peer}
        if isinstance(value, nn.Module):
            return {"t": "module", "tree": self._encode_tree(value, blobs)}
        if isinstance(value, torch.optim.Optimizer):
            return self._encode_optimizer(value, blobs)
        if isinstance(value, type):
            if self.strict:
                raise TypeError(f"a class ({value.__name__}) cannot be handed to the learner's code")
            return {"t": "class", "h": self.export(value), "name": value.__name__}
        if callable(value):
            path = _torch_function_path(value)
            if path is not None:
                return {"t": "fn", "path": path}
            name = getattr(value, "__name__", type(value).__name__)
            return {"t": "obj", "h": self.export(value), "name": str(name)}
        if dataclasses.is_dataclass(value):
            fields = {
                f.name: self.encode(getattr(value, f.name), blobs, grads, depth + 1) for f in dataclasses.fields(value)
            }
            return {"t": "dc", "cls": _path_of(type(value)), "v": fields}
        if self.strict and not type(value).__module__.startswith("transformer_lib"):
            raise TypeError(f"a {type(value).__name__} cannot be handed to the learner's code")
        return {"t": "obj", "h": self.export(value), "name": type(value).__name__}

    def _encode_tensor(self, t: Tensor, blobs: list[bytes], grads: list[Tensor] | None) -> dict:
        data = t.detach()
        if data.is_complex() or str(data.dtype).removeprefix("torch.") not in _DTYPES:
            data = data.float()
        data = data.cpu().contiguous()
        shape = [int(s) for s in data.shape]
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        blobs.append(raw)
        node = {"t": "tensor", "dtype": str(data.dtype).removeprefix("torch."), "shape": shape, "b": len(blobs) - 1}
        if grads is not None and t.requires_grad and torch.is_grad_enabled():
            grads.append(t)
            node["gi"] = len(grads) - 1
        return node

    def _peer_handle(self, value: Any) -> int | None:
        """The other side's handle when ``value`` stands for one of its objects, else None."""
        if isinstance(value, PeerObject):
            return value._tl_h if value._tl_ep is self else None
        if isinstance(value, nn.Module):
            peer = value.__dict__.get("_tl_peer")
        elif isinstance(value, type) and issubclass(value, PeerClassBase):
            peer = value.__dict__.get("_tl_peer")
        else:
            return None
        return peer[1] if peer is not None and peer[0] is self else None

    def _encode_tree(self, module: nn.Module, blobs: list[bytes]) -> dict:
        h = self.export(module)
        self.trees[h] = module
        attrs = {}
        for name, value in module.__dict__.items():
            if name in _MODULE_BASE_KEYS or name.startswith("_tl_"):
                continue
            try:
                attrs[name] = self._encode_attr(value, blobs)
            except Exception:  # noqa: BLE001 — an attribute that cannot travel stays behind
                continue
        children = {
            name: (None if child is None else self._encode_child(child, blobs))
            for name, child in module._modules.items()
        }
        node = {
            "h": h,
            "cls": _path_of(type(module)),
            "name": type(module).__name__,
            "attrs": attrs,
            "children": children,
            "sig": _signature_spec(module.forward),
            "state": self._node_state(module, blobs),
        }
        return node

    def _encode_child(self, child: nn.Module, blobs: list[bytes]) -> dict:
        peer = self._peer_handle(child)
        if peer is not None:
            return {"ref": peer}
        return self._encode_tree(child, blobs)

    def _encode_attr(self, value: Any, blobs: list[bytes], depth: int = 0) -> Any:
        """Plain data (and torch functions, dataclasses of plain data) only: what a module's attribute may be."""
        if depth > 8:
            raise ValueError("too deep")
        if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
            return self.encode(value, blobs)
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {"t": kind, "v": [self._encode_attr(v, blobs, depth + 1) for v in value]}
        if isinstance(value, dict):
            return {
                "t": "dict",
                "v": [
                    [self._encode_attr(k, blobs, depth + 1), self._encode_attr(v, blobs, depth + 1)]
                    for k, v in value.items()
                ],
            }
        if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
            return self.encode(value, blobs)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {
                f.name: self._encode_attr(getattr(value, f.name), blobs, depth + 1) for f in dataclasses.fields(value)
            }
            return {"t": "dc", "cls": _path_of(type(value)), "v": fields}
        if callable(value) and not isinstance(value, type):
            path = _torch_function_path(value)
            if path is not None:
                return {"t": "fn", "path": path}
        raise ValueError("not plain data")

    def _node_state(self, module: nn.Module, blobs: list[bytes]) -> dict:
        params = {}
        for name, p in module._parameters.items():
            params[name] = None if p is None else [self._encode_tensor(p, blobs, None), bool(p.requires_grad)]
        buffers = {
            name: (None if b is None else self._encode_tensor(b, blobs, None)) for name, b in module._buffers.items()
        }
        return {
            "training": bool(module.training),
            "params": params,
            "buffers": buffers,
            "np": sorted(module._non_persistent_buffers_set),
        }

    def _encode_optimizer(self, opt: torch.optim.Optimizer, blobs: list[bytes]) -> dict:
        cls = type(opt)
        if not cls.__module__.startswith("torch.optim"):
            raise TypeError(f"optimizer {cls.__name__} cannot be handed over")
        where: dict[int, list] = {}
        for h, node in list(self.trees.items()):
            for name, p in node._parameters.items():
                if p is not None:
                    where[id(p)] = [h, name]
        groups = []
        for group in opt.param_groups:
            refs = []
            for p in group["params"]:
                if id(p) not in where:
                    raise TypeError("the optimizer holds parameters of a module that was not handed over with it")
                refs.append(where[id(p)])
            hyper = {k: self._encode_attr(v, blobs) for k, v in group.items() if k != "params"}
            groups.append({"params": refs, "hyper": hyper})
        return {"t": "optim", "h": self.export(opt), "cls": _path_of(cls), "groups": groups}

    # ---------------------------------------------------------------- decoding

    def decode(self, node: Any, blobs: list[bytes], leaves: list | None = None, depth: int = 0) -> Any:
        if depth > 80:
            raise ProtocolError("value nested too deeply")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict):
            raise ProtocolError(f"unexpected value {type(node).__name__}")
        kind = node.get("t")
        if kind == "tensor":
            t = self._decode_tensor(node, blobs)
            gi = node.get("gi")
            if leaves is not None and isinstance(gi, int) and t.is_floating_point():
                t.requires_grad_(True)
                while len(leaves) <= gi:
                    leaves.append(None)
                leaves[gi] = t
            return t
        if kind in ("list", "tuple"):
            items = [self.decode(v, blobs, leaves, depth + 1) for v in _as_list(node.get("v"))]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            out = {}
            for pair in _as_list(node.get("v")):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ProtocolError("bad dict item")
                key = self.decode(pair[0], blobs, None, depth + 1)
                try:
                    out[key] = self.decode(pair[1], blobs, leaves, depth + 1)
                except TypeError:
                    raise ProtocolError("unhashable dict key") from None
            return out
        if kind in _REFERENCE_KINDS:
            return self._decode_reference(kind, node, blobs)
        return self._decode_plain(kind, node, blobs, depth)

    def _decode_plain(self, kind: Any, node: dict, blobs: list[bytes], depth: int) -> Any:
        """The values ``decode`` leaves to a helper that are data, not references to objects."""
        if kind == "float":
            return float(str(node.get("v")))
        if kind == "bigint":
            return int(str(node.get("v"))[:100])
        if kind == "dtype":
            name = node.get("v")
            if name not in _DTYPES:
                raise ProtocolError(f"unknown dtype {name!r}")
            return _DTYPES[name]
        if kind == "device":
            return torch.device("cpu") if self.strict else torch.device(str(node.get("v")))
        if kind == "gen":
            g = torch.Generator()
            try:
                g.set_state(torch.frombuffer(bytearray(self._blob(node, blobs)), dtype=torch.uint8))
            except Exception:  # noqa: BLE001
                raise ProtocolError("bad generator state") from None
            return g
        if kind == "dc":
            fields = {str(k): self.decode(v, blobs, None, depth + 1) for k, v in _as_dict(node.get("v")).items()}
            cls = None if self.strict else _resolve(str(node.get("cls")))
            if isinstance(cls, type) and dataclasses.is_dataclass(cls):
                try:
                    return cls(**fields)
                except Exception:  # noqa: BLE001
                    pass
            return types.SimpleNamespace(**fields)
        if kind == "optim":
            if self.strict:
                raise ProtocolError("the learner's side cannot send an optimizer")
            return self._decode_optimizer(node, blobs)
        raise ProtocolError(f"unknown value kind {kind!r}")

    def _decode_reference(self, kind: str, node: dict, blobs: list[bytes]) -> Any:
        """An object that lives on one side, referred to from the other: a handle, never the object's bytes."""
        if kind == "ref":
            h = node.get("h")
            if h not in self.objects:
                raise ProtocolError("reference to an unknown object")
            return self.objects[h]
        if kind == "module":
            return self._decode_tree(node.get("tree"), blobs)
        if kind == "class":
            return self._peer_class(_int(node.get("h")), str(node.get("name", "Class")))
        if kind == "obj":
            h = _int(node.get("h"))
            cached = self.peers.get(h)
            if cached is None:
                cached = PeerObject(self, h, str(node.get("name", "object"))[:100])
                self.peers[h] = cached
            return cached
        if kind == "method":
            return PeerMethod(self, _int(node.get("h")), str(node.get("name", "method"))[:100])
        if kind == "fn":
            path = str(node.get("path"))
            fn = _resolve(path) if self.policy.may_resolve(path.replace(":", ".")) else None
            if fn is None or isinstance(fn, type) or not callable(fn):
                raise ProtocolError(f"unknown function {path!r}")
            return fn
        raise ProtocolError(f"unknown value kind {kind!r}")

    def _blob(self, node: dict, blobs: list[bytes]) -> bytes:
        b = node.get("b")
        if not isinstance(b, int) or not 0 <= b < len(blobs):
            raise ProtocolError("bad blob index")
        return blobs[b]

    def _decode_tensor(self, node: dict, blobs: list[bytes]) -> Tensor:
        dtype = _DTYPES.get(node.get("dtype"))
        shape = node.get("shape")
        if dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ProtocolError("bad tensor header")
        raw = self._blob(node, blobs)
        count = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if count * itemsize != len(raw):
            raise ProtocolError("tensor size does not match its shape")
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)

    def _peer_class(self, h: int, name: str) -> type:
        cached = self.peers.get(h)
        if cached is None:
            safe = name if name.isidentifier() else "Class"
            cached = type(safe, (PeerClassBase,), {"_tl_peer": (self, h), "__module__": "transformer_lib.grading.wire"})
            self.peers[h] = cached
        return cached

    def _local_class(self, path: str) -> type | None:
        if not self.policy.may_resolve(path.replace(":", ".")):
            return None
        if self.strict and not path.startswith("torch.nn."):
            return None
        cls = _resolve(path)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and not issubclass(cls, RemoteModule):
            return cls
        return None

    def _decode_tree(self, node: Any, blobs: list[bytes]) -> nn.Module:
        if not isinstance(node, dict):
            raise ProtocolError("bad module tree")
        if "ref" in node:
            h = node["ref"]
            if h not in self.objects:
                raise ProtocolError("reference to an unknown module")
            return self.objects[h]
        h = _int(node.get("h"))
        existing = self.mirrors.get(h)
        if existing is not None:
            self._apply_state(existing, node.get("state"), blobs, ("peer", h))
            return existing
        cls = self._local_class(str(node.get("cls")))
        if cls is None:
            module = _remote_module_class(str(node.get("name", "Module"))[:100]).__new__(
                _remote_module_class(str(node.get("name", "Module"))[:100])
            )
            nn.Module.__init__(module)
            module.__dict__["_tl_peer"] = (self, h)
            sig = _make_signature(node.get("sig") or [])
            ep = self

            def forward(*args: Any, **kwargs: Any) -> Any:
                return ep.call(h, None, args, kwargs)

            if sig is not None:
                forward.__signature__ = sig  # type: ignore[attr-defined]
            module.__dict__["forward"] = forward
        else:
            module = cls.__new__(cls)
            nn.Module.__init__(module)
            module.__dict__["_tl_peer"] = (self, h)
        for name, value in _as_dict(node.get("attrs")).items():
            if not isinstance(name, str) or name in _MODULE_BASE_KEYS or name.startswith("_tl_") or name == "forward":
                continue
            try:
                decoded = self.decode(value, blobs)
            except ProtocolError:
                continue
            if self.strict and (isinstance(decoded, (PeerObject, nn.Module)) or isinstance(decoded, type)):
                continue
            module.__dict__[name] = decoded
        for name, child in _as_dict(node.get("children")).items():
            module._modules[str(name)] = None if child is None else self._decode_tree(child, blobs)
        self.mirrors[h] = module
        self._apply_state(module, node.get("state"), blobs, ("peer", h))
        return module

    def _apply_state(self, module: nn.Module, state: Any, blobs: list[bytes], key: tuple) -> None:
        if not isinstance(state, dict):
            return
        module.training = bool(state.get("training", module.training))
        with torch.no_grad():
            for name, entry in _as_dict(state.get("params")).items():
                name = str(name)
                if entry is None:
                    if name not in module._parameters:
                        module._parameters[name] = None
                    continue
                tensor_node, requires_grad = entry
                t = self._decode_tensor(tensor_node, blobs)
                current = module._parameters.get(name)
                if current is not None and current.shape == t.shape and current.dtype == t.dtype:
                    if not torch.equal(current.detach(), t):
                        current.detach().copy_(t)
                    if current.is_floating_point():
                        current.requires_grad_(bool(requires_grad))
                else:
                    module._parameters[name] = nn.Parameter(
                        t, requires_grad=bool(requires_grad) and t.is_floating_point()
                    )
            for name, tensor_node in _as_dict(state.get("buffers")).items():
                name = str(name)
                if tensor_node is None:
                    module._buffers[name] = None
                    continue
                t = self._decode_tensor(tensor_node, blobs)
                current = module._buffers.get(name)
                if current is not None and current.shape == t.shape and current.dtype == t.dtype:
                    if not torch.equal(current, t):
                        current.copy_(t)
                else:
                    module._buffers[name] = t
            nonpersistent = state.get("np")
            if isinstance(nonpersistent, list):
                module._non_persistent_buffers_set = {str(n) for n in nonpersistent}
        self._fingerprints[key] = _fingerprint(module)

    def _decode_optimizer(self, node: dict, blobs: list[bytes]) -> torch.optim.Optimizer:
        h = _int(node.get("h"))
        cached = self.optimizers.get(h)
        if cached is not None:
            return cached
        cls = _resolve(str(node.get("cls")))
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ProtocolError("unknown optimizer class")
        groups = []
        for group in _as_list(node.get("groups")):
            params = []
            for ref in group["params"]:
                mirror = self.mirrors.get(_int(ref[0]))
                if mirror is None:
                    raise ProtocolError("optimizer parameter of an unknown module")
                params.append(mirror._parameters[str(ref[1])])
            hyper = {str(k): self.decode(v, blobs) for k, v in _as_dict(group.get("hyper")).items()}
            groups.append({"params": params, **hyper})
        opt = cls(groups, **{k: v for k, v in groups[0].items() if k != "params"}) if groups else None
        self.optimizers[h] = opt
        return opt

    # ---------------------------------------------------------------- state synchronisation

    def _state_nodes(self) -> list[tuple[str, int, nn.Module]]:
        nodes = [("mine", h, m) for h, m in list(self.trees.items())]
        nodes += [("yours", h, m) for h, m in list(self.mirrors.items())]
        return nodes

    def _outgoing_state(self, blobs: list[bytes]) -> list:
        out = []
        for whose, h, module in self._state_nodes():
            key = ("mine" if whose == "mine" else "peer", h)
            fp = _fingerprint(module)
            if self._fingerprints.get(key) != fp:
                out.append([whose, h, self._node_state(module, blobs)])
                self._fingerprints[key] = fp
        return out

    def _incoming_state(self, entries: Any, blobs: list[bytes]) -> None:
        for entry in _as_list(entries):
            if not isinstance(entry, list) or len(entry) != 3:
                raise ProtocolError("bad state entry")
            whose, h, state = entry
            if whose == "yours":  # the other side's mirror of one of my trees
                module = self.trees.get(h)
                key = ("mine", h)
            else:
                module = self.mirrors.get(h)
                key = ("peer", h)
            if module is not None:
                self._apply_state(module, state, blobs, key)

    def _hooked_nodes(self) -> list:
        out = []
        for whose, h, module in self._state_nodes():
            if module._forward_pre_hooks:
                out.append([whose, h])
        return out

    # ---------------------------------------------------------------- requests

    def _send(self, header: dict, blobs: list[bytes]) -> None:
        header["state"] = self._outgoing_state(blobs)
        self.channel.send(header, blobs)

    def _wait(self, seq: int) -> tuple[dict, list[bytes]]:
        """Serve the other side's requests until the answer to request ``seq`` comes."""
        if self.dead:
            raise PeerGone("the process running the learner's code is gone")
        while True:
            try:
                header, blobs = self.channel.recv(self.deadline)
                self._incoming_state(header.get("state"), blobs)
            except BaseException:
                self.dead = True
                raise
            if header.get("re") == seq:
                return header, blobs
            if "op" in header:
                self._serve(header, blobs)
                continue
            self.dead = True
            raise ProtocolError("unexpected message")

    def request(self, header: dict, blobs: list[bytes] | None = None) -> tuple[dict, list[bytes]]:
        seq = next(self._seq)
        header["seq"] = seq
        self._send(header, blobs if blobs is not None else [])
        reply, reply_blobs = self._wait(seq)
        if "err" in reply:
            raise _peer_error(reply["err"])
        return reply, reply_blobs

    def call(self, h: int, attr: str | None, args: tuple, kwargs: dict) -> Any:
        blobs: list[bytes] = []
        grads: list[Tensor] = []
        enc_args = self.encode(list(args), blobs, grads)
        enc_kwargs = self.encode(dict(kwargs), blobs, grads)
        params: list[Tensor] = []
        param_refs: list = []
        if torch.is_grad_enabled():
            for whose, nh, module in self._state_nodes():
                for name, p in module._parameters.items():
                    if p is not None and p.requires_grad:
                        params.append(p)
                        param_refs.append([whose, nh, name])
        request = {
            "op": "call",
            "h": h,
            "attr": attr,
            "args": enc_args,
            "kwargs": enc_kwargs,
            "grad": bool(grads or params) and torch.is_grad_enabled(),
            "pgi": param_refs,
            "hooks": self._hooked_nodes(),
        }
        request["_blobs"], request["_originals"] = blobs, (args, kwargs)
        if not (grads and torch.is_grad_enabled()) and not params:
            value, _, _, _ = self._call_raw(request)
            return value
        box: list = []
        outputs = _Bridge.apply(self, request, box, *grads, *params)
        return _fill_slots(box[0], outputs[:-1])

    def _call_raw(
        self, request: dict, blobs: list[bytes] | None = None
    ) -> tuple[Any, list[Tensor], int | None, list[bool]]:
        blobs = request.pop("_blobs", blobs if blobs is not None else [])
        originals = request.pop("_originals", ((), {}))
        reply, reply_blobs = self.request(request, blobs)
        self._write_back(originals, reply.get("mut"), reply_blobs)
        for entry in _as_list(reply.get("hooked")):
            self._replay_hook(entry, reply_blobs)
        value = self.decode(reply.get("ok"), reply_blobs)
        tensors: list[Tensor] = []
        value = _tensor_slots(value, tensors)
        diff = [bool(d) for d in _as_list(reply.get("diff"))][: len(tensors)]
        diff += [False] * (len(tensors) - len(diff))
        diff = [d and t.is_floating_point() for d, t in zip(diff, tensors)]
        gid = reply.get("gid")
        if request.get("grad"):
            return value, tensors, gid if isinstance(gid, int) else None, diff
        return _fill_slots(value, tensors), tensors, None, diff

    def _write_back(self, originals: tuple, entries: Any, blobs: list[bytes]) -> None:
        """A dict or list argument the other side's code changed (a cache it fills) changes here too."""
        args, kwargs = originals
        for entry in _as_list(entries):
            if not isinstance(entry, list) or len(entry) != 2:
                raise ProtocolError("bad write-back entry")
            where, node = entry
            if isinstance(where, int) and 0 <= where < len(args):
                original = args[where]
            elif isinstance(where, str) and where in kwargs:
                original = kwargs[where]
            else:
                continue
            value = self.decode(node, blobs)
            if isinstance(original, dict) and isinstance(value, dict):
                original.clear()
                original.update(value)
            elif isinstance(original, list) and isinstance(value, list):
                original[:] = value

    def _replay_hook(self, entry: Any, blobs: list[bytes]) -> None:
        if not isinstance(entry, list) or len(entry) != 4:
            raise ProtocolError("bad hook record")
        whose, h, args, kwargs = entry
        module = self.trees.get(h) if whose == "yours" else self.mirrors.get(h)
        if module is None:
            return
        args = self.decode(args, blobs)
        kwargs = self.decode(kwargs, blobs)
        args = tuple(args) if isinstance(args, (list, tuple)) else (args,)
        kwargs = kwargs if isinstance(kwargs, dict) else {}
        for hook_id, hook in list(module._forward_pre_hooks.items()):
            if hook_id in module._forward_pre_hooks_with_kwargs:
                hook(module, args, kwargs)
            else:
                hook(module, args)

    def getattr(self, h: int, name: str) -> Any:
        reply, blobs = self.request({"op": "getattr", "h": h, "name": name})
        return self.decode(reply.get("ok"), blobs)

    def _backward(self, gid: int, grads: list[Tensor | None]) -> list[Tensor | None]:
        blobs: list[bytes] = []
        enc = [None if g is None else self._encode_tensor(g, blobs, None) for g in grads]
        reply, reply_blobs = self.request({"op": "backward", "gid": gid, "grads": enc}, blobs)
        out = []
        for node in _as_list(reply.get("ok")):
            out.append(None if node is None else self._decode_tensor(node, reply_blobs))
        return out

    # ---------------------------------------------------------------- serving

    def serve_forever(self) -> None:
        """Answer requests until the other side closes the channel (the producer's main loop)."""
        while True:
            try:
                header, blobs = self.channel.recv(None)
            except PeerGone:
                return
            self._incoming_state(header.get("state"), blobs)
            if "op" in header:
                self._serve(header, blobs)

    def _serve(self, header: dict, blobs: list[bytes]) -> None:
        seq = header.get("seq")
        out_blobs: list[bytes] = []
        try:
            reply = self._dispatch(header, blobs, out_blobs)
        except (PeerGone, PeerTimeout, ProtocolError):
            raise
        except BaseException as exc:  # noqa: BLE001 — the answer says what went wrong
            out_blobs = []
            reply = {"err": _describe_error(exc)}
        reply["re"] = seq
        try:
            self._send(reply, out_blobs)
        except (TypeError, ValueError) as exc:  # an answer that cannot be sent as plain data
            self._send({"re": seq, "err": _describe_error(exc)}, [])

    def _object(self, h: Any) -> Any:
        if not isinstance(h, int) or h not in self.objects:
            raise LookupError("unknown object")
        return self.objects[h]

    def _dispatch(self, header: dict, blobs: list[bytes], out: list[bytes]) -> dict:
        op = header.get("op")
        if op == "call":
            return self._serve_call(header, blobs, out)
        if op == "getattr":
            obj = self._object(header.get("h"))
            name = header.get("name")
            if not isinstance(name, str) or not self.policy.may_getattr(obj, name):
                raise AttributeError(f"attribute {name!r} is not available to the learner's code")
            value = getattr(obj, name)
            if self.strict and callable(value) and not isinstance(value, (nn.Module, Tensor)):
                if not self.policy.may_call_method(obj, name):
                    raise AttributeError(f"{type(obj).__name__}.{name} is not available to the learner's code")
                return {"ok": {"t": "method", "h": header.get("h"), "name": name}}
            return {"ok": self.encode(value, out)}
        if op == "backward":
            return self._serve_backward(header, blobs, out)
        handler = self.extra_ops.get(op)
        if handler is None:
            raise LookupError(f"unknown request {op!r}")
        return handler(self, header, blobs, out)

    def _serve_call(self, header: dict, blobs: list[bytes], out: list[bytes]) -> dict:
        obj = self._object(header.get("h"))
        attr = header.get("attr")
        grad = bool(header.get("grad"))
        leaves: list = []
        args = self.decode(header.get("args"), blobs, leaves if grad else None)
        kwargs = self.decode(header.get("kwargs"), blobs, leaves if grad else None)
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ProtocolError("bad call arguments")
        n_arg_leaves = len(leaves)
        for ref in _as_list(header.get("pgi")):
            whose, h, name = ref
            module = self.mirrors.get(h) if whose == "mine" else self.trees.get(h)
            leaves.append(None if module is None else module._parameters.get(str(name)))
        if attr is None:
            if isinstance(obj, nn.Module):
                fn = obj.forward
            elif isinstance(obj, type) and self.strict:
                raise TypeError("classes cannot be called from the learner's side")
            else:
                fn = obj
        else:
            if not isinstance(attr, str) or not self.policy.may_call_method(obj, attr):
                raise AttributeError(f"{type(obj).__name__}.{attr} is not available to the learner's code")
            fn = getattr(obj, attr)
        records: list = []
        handles = self._install_recorders(header.get("hooks"), records)
        try:
            with torch.enable_grad() if grad else _nullcontext():
                result = fn(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        grads: list[Tensor] = []
        reply: dict = {}
        reply["ok"] = self.encode(result, out, grads)
        reply["hooked"] = [[w, h, self.encode(a, out), self.encode(k, out)] for w, h, a, k in records]
        mutable = [(i, a) for i, a in enumerate(args) if type(a) in (dict, list)]
        mutable += [(k, a) for k, a in kwargs.items() if type(a) in (dict, list)]
        reply["mut"] = [[where, self.encode(a, out)] for where, a in mutable]
        tensors: list[Tensor] = []
        _tensor_slots(result, tensors)
        if grad:
            diff = [t.requires_grad for t in tensors]
            reply["diff"] = diff
            if any(diff):
                gid = next(self._gids)
                self.graphs[gid] = (tensors, leaves, n_arg_leaves)
                reply["gid"] = gid
        return reply

    def _install_recorders(self, hooks: Any, records: list) -> list:
        handles = []
        for entry in _as_list(hooks):
            whose, h = entry
            module = self.mirrors.get(h) if whose == "mine" else self.trees.get(h)
            if not isinstance(module, nn.Module):
                continue
            back = "yours" if whose == "mine" else "mine"

            def record(_m: nn.Module, args: tuple, kwargs: dict, back: str = back, h: int = h) -> None:
                records.append((back, h, _detached(args), _detached(kwargs)))

            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
        return handles

    def _serve_backward(self, header: dict, blobs: list[bytes], out: list[bytes]) -> dict:
        gid = header.get("gid")
        if gid not in self.graphs:
            raise LookupError("this graph was already used for a backward pass (or never existed)")
        outputs, leaves, n_arg_leaves = self.graphs.pop(gid)
        grads_in = [None if g is None else self._decode_tensor(g, blobs) for g in _as_list(header.get("grads"))]
        pairs = [(o, g) for o, g in zip(outputs, grads_in) if g is not None and o.requires_grad]
        if self.strict:
            # The judge's own tensors (a test's weights captured by a sub-layer) must get their .grad here.
            arg_leaves = [leaf for leaf in leaves[:n_arg_leaves] if leaf is not None]
            for leaf in arg_leaves:
                leaf.grad = None
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g.to(o.dtype) for o, g in pairs])
            result = [None if leaf is None or i >= n_arg_leaves else leaf.grad for i, leaf in enumerate(leaves)]
        else:
            wanted = [(i, leaf) for i, leaf in enumerate(leaves) if leaf is not None and leaf.requires_grad]
            result = [None] * len(leaves)
            if pairs and wanted:
                got = torch.autograd.grad(
                    [o for o, _ in pairs],
                    [leaf for _, leaf in wanted],
                    [g.to(o.dtype) for o, g in pairs],
                    allow_unused=True,
                )
                for (i, _), g in zip(wanted, got):
                    result[i] = g
        return {"ok": [None if g is None else self._encode_tensor(g, out, None) for g in result]}


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return (
            type(value)(_detached(v) for v in value) if isinstance(value, list) else tuple(_detached(v) for v in value)
        )
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _fingerprint(module: nn.Module) -> tuple:
    params = tuple(
        (n, None if p is None else (id(p), p._version, p.requires_grad)) for n, p in module._parameters.items()
    )
    buffers = tuple((n, None if b is None else (id(b), b._version)) for n, b in module._buffers.items())
    return (module.training, params, buffers)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError("expected a handle")
    return value


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError("expected a list")
    return value


def _as_dict(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("expected an object")
    return value


def _learner_frame(tb: Any) -> str:
    """`` (in fn, at `code`)`` for the innermost traceback frame outside the grading package and torch."""
    import linecache
    import traceback

    here = os.path.dirname(os.path.abspath(__file__))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    found = ""
    for frame, lineno in traceback.walk_tb(tb):
        filename = frame.f_code.co_filename
        if filename.startswith((here, torch_dir)) or "importlib" in filename:
            continue
        line = linecache.getline(filename, lineno).strip()
        if line:
            line = " ".join(line.split())
            found = f" (in {frame.f_code.co_name}, at `{line[:99] + '…' if len(line) > 100 else line}`)"
    return found


def describe_exception(exc: BaseException) -> str:
    """What the learner reads when their code raised: the exception, its message and where."""
    if isinstance(exc, PeerError):
        return exc.description
    if isinstance(exc, SystemExit):
        return (
            f"your code called sys.exit({'' if exc.code is None else repr(exc.code)}); a function should return instead"
        )
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    text = " ".join(f"raised {type(exc).__name__}: {exc}".split())
    text = text if len(text) <= 400 else text[:399] + "…"
    return text + _learner_frame(exc.__traceback__)


def _describe_error(exc: BaseException) -> dict:
    if isinstance(exc, PeerError):
        return {"type": exc.kind, "msg": exc.message, "desc": exc.description}
    return {"type": type(exc).__name__, "msg": " ".join(str(exc).split())[:300], "desc": describe_exception(exc)}


def _peer_error(err: Any) -> PeerError:
    err = err if isinstance(err, dict) else {}
    kind = str(err.get("type", "Error"))[:100]
    message = str(err.get("msg", ""))[:400]
    description = str(err.get("desc", ""))[:400]
    cls = PeerNotImplemented if kind == "NotImplementedError" else PeerError
    return cls(kind, message, description)
