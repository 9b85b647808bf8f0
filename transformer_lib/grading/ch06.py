"""Chapter 6 exercises — the encoder.

* ``06.feed_forward`` — the position-wise feed-forward network (``FeedForward``);
* ``06.add_norm`` — Add & Norm around a sub-layer, post-LN and pre-LN (``AddNorm``);
* ``06.encoder_layer`` — a whole encoder layer (``EncoderLayer``), against ``nn.TransformerEncoderLayer``.

Oracles are PyTorch's own modules (``nn.Linear``/``nn.ReLU``, ``nn.LayerNorm``,
``nn.TransformerEncoderLayer``) with the learner's weights copied in or out; properties (one position
never sees another through the FFN, padding never leaks, dropout touches only the sub-layer's output)
point at *what* is wrong. The small helpers at the top are shared with the chapter 7-9 exercises.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .core import Exercise, Mismatch, expect, expect_close, expect_shape, expect_type, register

# float32 through one layer of width 16: the learner's arithmetic and PyTorch's differ only in the order of
# sums (a few ulps, ~1e-6); a misplaced norm, a lost residual or a leaking mask moves values by >= 1e-2.
ATOL = 1e-5
RTOL = 1e-4

D_MODEL, HEADS, D_FF = 16, 4, 32
LENGTHS = [5, 3, 2]  # real tokens per row of the test batch; the rest is padding
SEQ_LEN = max(LENGTHS)


# --------------------------------------------------------------------------- helpers (shared with ch07-ch09)


def generator(seed: int) -> torch.Generator:
    """A private random generator, so tests never depend on (or disturb) the global random state."""
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    """Seeded standard-normal tensor of ``shape`` (times ``scale``)."""
    return torch.randn(*shape, generator=generator(seed)) * scale


def length_mask(lengths: list[int], size: int) -> Tensor:
    """``(batch, size)`` bool: True on the first ``lengths[b]`` positions of row ``b``."""
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


def attribute(module: Any, name: str, types: type | tuple[type, ...], what: str) -> Any:
    """``module.name``, which must exist and be an instance of ``types`` (else a Mismatch naming it)."""
    if not hasattr(module, name):
        raise Mismatch(f"{what} has no attribute `{name}`: keep the names the task gives")
    value = getattr(module, name)
    expect_type(value, types, f"`{name}`")
    return value


def build(cls: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """Instantiate the learner's class; it must be a class whose instances are ``nn.Module`` s."""
    if not isinstance(cls, type):
        raise Mismatch(f"check() needs your class itself, got {type(cls).__name__}")
    module = cls(*args, **kwargs)
    expect(isinstance(module, nn.Module), f"{cls.__name__} should be a subclass of nn.Module")
    return module


@torch.no_grad()
def randomise(module: nn.Module, seed: int) -> None:
    """Give every parameter seeded random values (norm scales near 1), so zero biases hide nothing."""
    g = generator(seed)
    for name, p in module.named_parameters():
        noise = torch.rand(p.shape, generator=g) - 0.5  # uniform in [-0.5, 0.5)
        p.copy_(1.0 + noise if ("norm" in name and name.endswith("weight")) else noise)


@torch.no_grad()
def copy_mha(ours: nn.Module, ref: nn.MultiheadAttention, what: str) -> None:
    """Load ``ref``'s packed in-projection and its out-projection into the library's W_Q, W_K, W_V, W_O."""
    d = ref.embed_dim
    for i, name in enumerate(("W_Q", "W_K", "W_V")):
        linear = attribute(ours, name, nn.Linear, what)
        linear.weight.copy_(ref.in_proj_weight[i * d : (i + 1) * d])
        linear.bias.copy_(ref.in_proj_bias[i * d : (i + 1) * d])
    w_o = attribute(ours, "W_O", nn.Linear, what)
    w_o.weight.copy_(ref.out_proj.weight)
    w_o.bias.copy_(ref.out_proj.bias)


@torch.no_grad()
def copy_ffn(ours: nn.Module, linear1: nn.Linear, linear2: nn.Linear, what: str) -> None:
    """Load PyTorch's two FFN linears into the library's ``PositionwiseFeedForward`` (w_1, w_2)."""
    attribute(ours, "w_1", nn.Linear, what).load_state_dict(linear1.state_dict())
    attribute(ours, "w_2", nn.Linear, what).load_state_dict(linear2.state_dict())


def differs(a: Tensor, b: Tensor, atol: float = 1e-4) -> bool:
    """True when two tensors of the same shape differ somewhere by more than ``atol``."""
    return a.shape != b.shape or bool(((a - b).abs() > atol).any())


def matches(a: Any, b: Tensor, atol: float = 1e-4) -> bool:
    """True when ``a`` is a tensor of ``b``'s shape equal to it within ``atol`` (for diagnosing known mistakes)."""
    return isinstance(a, Tensor) and a.shape == b.shape and not differs(a.detach(), b.detach(), atol)


def project(out: Tensor, seed: int) -> Tensor:
    """A scalar that depends on every output entry with a random weight (``.sum()`` of a LayerNorm output is
    constant, so its gradient would be zero everywhere)."""
    return (out * randn(*out.shape, seed=seed)).sum()


def expect_gradients(module: nn.Module, what: str) -> None:
    """After a backward pass: every parameter of ``module`` has a finite, non-zero gradient."""
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        expect(p.grad is not None, f"no gradient reached `{name}` of {what}: is it used (and not detached)?")
        expect(bool(torch.isfinite(p.grad).all()), f"the gradient of `{name}` of {what} contains NaN or inf")
        expect(bool(p.grad.abs().sum() > 0), f"the gradient of `{name}` of {what} is zero everywhere: is it used?")


# --------------------------------------------------------------------------- 06.feed_forward

feed_forward = register(
    Exercise("06.feed_forward", "Position-wise feed-forward network", target="FeedForward", timeout_s=20)
)


def _ffn(FeedForward: Any, d_model: int = D_MODEL, d_ff: int = D_FF, seed: int = 1) -> nn.Module:
    ffn = build(FeedForward, d_model, d_ff)
    for name in ("w_1", "w_2"):
        attribute(ffn, name, nn.Linear, "your FeedForward")
    randomise(ffn, seed)
    return ffn


def _ffn_oracle(ffn: nn.Module, seed: int) -> nn.Sequential:
    """PyTorch's Linear -> ReLU -> Linear with the learner's weights (fresh random biases where theirs are missing)."""
    d_model, d_ff = ffn.w_1.in_features, ffn.w_1.out_features
    ref = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
    randomise(ref, seed)  # biases stay random if the learner's layers have none
    with torch.no_grad():
        for ours, theirs in ((ffn.w_1, ref[0]), (ffn.w_2, ref[2])):
            theirs.weight.copy_(ours.weight)
            if ours.bias is not None:
                theirs.bias.copy_(ours.bias)
    return ref


@feed_forward.test("layers w_1 (d_model → d_ff) and w_2 (d_ff → d_model)")
def _(FeedForward: Any) -> None:
    ffn = _ffn(FeedForward)
    for name, fan_in, fan_out in (("w_1", D_MODEL, D_FF), ("w_2", D_FF, D_MODEL)):
        layer = getattr(ffn, name)
        expect(
            (layer.in_features, layer.out_features) == (fan_in, fan_out),
            f"`{name}` maps {layer.in_features} → {layer.out_features} features; with d_model={D_MODEL}, "
            f"d_ff={D_FF} it should map {fan_in} → {fan_out}",
        )


@feed_forward.test("both layers have a bias")
def _(FeedForward: Any) -> None:
    ffn = _ffn(FeedForward)
    for name, b in (("w_1", "b1"), ("w_2", "b2")):
        expect(getattr(ffn, name).bias is not None, f"`{name}` has no bias, but the formula adds {b}")


@feed_forward.test("output shape")
def _(FeedForward: Any) -> None:
    ffn = _ffn(FeedForward)
    out = ffn(randn(2, 7, D_MODEL, seed=2))
    expect_shape(out, (2, 7, D_MODEL), "the output for an input of shape (2, 7, d_model)")


@feed_forward.test("values match PyTorch's Linear → ReLU → Linear", points=2)
def _(FeedForward: Any) -> None:
    ffn = _ffn(FeedForward).eval()
    ref = _ffn_oracle(ffn, seed=3)
    x = randn(3, 6, D_MODEL, seed=4)
    with torch.no_grad():
        out, expected = ffn(x), ref(x)
        no_relu = ref[2](ref[0](x))  # a common slip, used only to make the message precise
    hint = ""
    if matches(out, no_relu):
        hint = "negative values of the hidden layer pass through unchanged"
    expect_close(out, expected, "the output", atol=ATOL, rtol=RTOL, hint=hint)


@feed_forward.test("each position is transformed on its own")
def _(FeedForward: Any) -> None:
    ffn = _ffn(FeedForward).eval()
    x = randn(2, 6, D_MODEL, seed=5)
    y = x.clone()
    y[:, 2] += randn(2, D_MODEL, seed=6)  # change position 2 only
    with torch.no_grad():
        a, b = ffn(x), ffn(y)
    others = [0, 1, 3, 4, 5]
    expect(
        not differs(a[:, others], b[:, others]),
        "changing the input at position 2 changed the output at other positions",
    )
    expect(differs(a[:, 2], b[:, 2]), "changing the input at position 2 did not change the output there")


@feed_forward.test("gradients reach both layers")
def _(FeedForward: Any) -> None:
    ffn = _ffn(FeedForward)
    x = randn(2, 5, D_MODEL, seed=7).requires_grad_()
    out = ffn(x)
    expect_type(out, Tensor, "the output")
    project(out, seed=8).backward()
    expect_gradients(ffn, "FeedForward")
    expect(x.grad is not None and bool(x.grad.abs().sum() > 0), "no gradient reached the input x")


# --------------------------------------------------------------------------- 06.add_norm

add_norm = register(Exercise("06.add_norm", "Add & Norm (post-LN and pre-LN)", target="AddNorm", timeout_s=20))


class _Recorder:
    """A sub-layer ``y -> tanh(y A) + c`` that remembers every input it was called with."""

    def __init__(self, d_model: int, seed: int) -> None:
        self.A = randn(d_model, d_model, seed=seed, scale=d_model**-0.5)
        self.c = randn(d_model, seed=seed + 1, scale=0.5)
        self.inputs: list[Tensor] = []

    def __call__(self, y: Tensor) -> Tensor:
        self.inputs.append(y.detach().clone())
        return torch.tanh(y @ self.A) + self.c


def _add_norm(
    AddNorm: Any, norm_first: bool, dropout: float = 0.0, d_model: int = D_MODEL, seed: int = 11
) -> nn.Module:
    module = build(AddNorm, d_model, dropout=dropout, norm_first=norm_first)
    attribute(module, "norm", nn.LayerNorm, "your AddNorm")
    randomise(module, seed)  # a non-trivial scale and shift: LayerNorm must be the module's own `norm`
    return module


def _layer_norm(module: nn.Module) -> nn.LayerNorm:
    """PyTorch's LayerNorm with the learner's scale and shift."""
    ref = nn.LayerNorm(module.norm.normalized_shape, eps=module.norm.eps)
    ref.load_state_dict(module.norm.state_dict())
    return ref


def _placement_hint(out: Tensor, x: Tensor, sub: Callable[[Tensor], Tensor], norm: nn.Module, norm_first: bool) -> str:
    """Which known slip ``out`` equals, described by what differs (or '')."""
    with torch.no_grad():
        post, pre = norm(x + sub(x)), x + sub(norm(x))
        if matches(out, pre if not norm_first else post):
            return f"the norm sits in the place it takes for norm_first={not norm_first}"
        if matches(out, norm(sub(x))) or matches(out, sub(norm(x))):
            return "the output does not contain x itself (the residual path)"
    return ""


@add_norm.test("output shape")
def _(AddNorm: Any) -> None:
    for norm_first in (False, True):
        module = _add_norm(AddNorm, norm_first).eval()
        out = module(randn(2, 5, D_MODEL, seed=12), _Recorder(D_MODEL, seed=13))
        expect_shape(out, (2, 5, D_MODEL), f"the output (norm_first={norm_first})")


@add_norm.test("residual: a sub-layer that returns zeros leaves x (pre-LN) or LayerNorm(x) (post-LN)")
def _(AddNorm: Any) -> None:
    x = randn(2, 5, D_MODEL, seed=14)
    for norm_first in (False, True):
        module = _add_norm(AddNorm, norm_first).eval()
        with torch.no_grad():
            out = module(x, torch.zeros_like)
            norm = _layer_norm(module)
            expected = x if norm_first else norm(x)
            without_x = torch.zeros_like(x) if norm_first else norm(torch.zeros_like(x))  # what is left without x
        hint = "x does not reach the output (the residual path)" if matches(out, without_x) else ""
        expect_close(
            out,
            expected,
            f"with a sub-layer that returns zeros, the output (norm_first={norm_first})",
            atol=ATOL,
            rtol=RTOL,
            hint=hint,
        )


@add_norm.test("post-LN (norm_first=False): LayerNorm(x + Sublayer(x))", points=2)
def _(AddNorm: Any) -> None:
    module = _add_norm(AddNorm, norm_first=False).eval()
    x, sub = randn(3, 4, D_MODEL, seed=15), _Recorder(D_MODEL, seed=16)
    with torch.no_grad():
        out = module(x, sub)
        norm = _layer_norm(module)
        expected = norm(x + sub(x))
    expect_close(out, expected, "the output", atol=ATOL, rtol=RTOL, hint=_placement_hint(out, x, sub, norm, False))


@add_norm.test("pre-LN (norm_first=True): x + Sublayer(LayerNorm(x))", points=2)
def _(AddNorm: Any) -> None:
    module = _add_norm(AddNorm, norm_first=True).eval()
    x, sub = randn(3, 4, D_MODEL, seed=17), _Recorder(D_MODEL, seed=18)
    with torch.no_grad():
        out = module(x, sub)
        norm = _layer_norm(module)
        expected = x + sub(norm(x))
    expect_close(out, expected, "the output", atol=ATOL, rtol=RTOL, hint=_placement_hint(out, x, sub, norm, True))


@add_norm.test("the sub-layer is called once, on the right input")
def _(AddNorm: Any) -> None:
    x = randn(2, 3, D_MODEL, seed=19)
    for norm_first in (False, True):
        module = _add_norm(AddNorm, norm_first).eval()
        sub = _Recorder(D_MODEL, seed=20)
        with torch.no_grad():
            module(x, sub)
            normed = _layer_norm(module)(x)
        expect(len(sub.inputs) == 1, f"the sub-layer was called {len(sub.inputs)} times (norm_first={norm_first})")
        seen = sub.inputs[0]
        if norm_first:
            expect(matches(seen, normed), "with norm_first=True the sub-layer's input is not the normalised x")
        else:
            expect(matches(seen, x), "with norm_first=False the sub-layer's input is not x itself")


@add_norm.test("dropout (training mode) acts on the sub-layer's output only")
def _(AddNorm: Any) -> None:
    x = randn(4, 6, D_MODEL, seed=21)
    for norm_first in (False, True):
        module = _add_norm(AddNorm, norm_first, dropout=0.5).train()
        with torch.no_grad():
            out = module(x, torch.zeros_like)  # nothing to drop: dropout must not show at all
            expected = x if norm_first else _layer_norm(module)(x)
        expect(
            matches(out, expected, ATOL),
            "in training mode with dropout=0.5 and a sub-layer that returns zeros, the output "
            f"(norm_first={norm_first}) changed: dropout is applied to more than the sub-layer's output",
        )
    module = _add_norm(AddNorm, True, dropout=0.5).train()
    with torch.no_grad():
        kept = module(x, torch.ones_like) - x  # pre-LN: each entry is 0 (dropped) or 1 / (1 - p) = 2 (kept)
    dropped, scaled = (kept.abs() < 1e-5), ((kept - 2.0).abs() < 1e-4)
    expect(
        bool((dropped | scaled).all()),
        "in training mode, the sub-layer's output is not dropped-or-rescaled entrywise "
        "(expected each entry to be zeroed or scaled by 1/(1-p))",
    )
    expect(bool(dropped.any()), "in training mode with dropout=0.5, no entry of the sub-layer's output was dropped")


@add_norm.test("gradients reach x, the sub-layer and the norm")
def _(AddNorm: Any) -> None:
    for norm_first in (False, True):
        module = _add_norm(AddNorm, norm_first).train()
        x = randn(2, 4, D_MODEL, seed=22).requires_grad_()
        w = randn(D_MODEL, D_MODEL, seed=23, scale=D_MODEL**-0.5).requires_grad_()
        out = module(x, lambda y, w=w: torch.tanh(y @ w))
        expect_type(out, Tensor, "the output")
        project(out, seed=24).backward()
        expect_gradients(module, f"AddNorm (norm_first={norm_first})")
        for name, t in (("x", x), ("the sub-layer's weights", w)):
            expect(
                t.grad is not None and bool(t.grad.abs().sum() > 0),
                f"no gradient reached {name} (norm_first={norm_first})",
            )


# --------------------------------------------------------------------------- 06.encoder_layer

encoder_layer = register(
    Exercise(
        "06.encoder_layer",
        "Encoder layer (self-attention + FFN, each in Add & Norm)",
        target="EncoderLayer",
        timeout_s=30,
    )
)


def _encoder_layer(
    EncoderLayer: Any, norm_first: bool, dropout: float = 0.0
) -> tuple[nn.Module, nn.TransformerEncoderLayer]:
    """The learner's layer with the weights of a random ``nn.TransformerEncoderLayer`` (the oracle) copied in."""
    ours = build(EncoderLayer, D_MODEL, HEADS, D_FF, dropout=dropout, norm_first=norm_first)
    what = "your EncoderLayer"
    for name in ("self_attn", "feed_forward"):
        attribute(ours, name, nn.Module, what)
    ref = nn.TransformerEncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    randomise(ref, seed=31)  # two different norms, so swapping norm1 and norm2 shows
    copy_mha(ours.self_attn, ref.self_attn, "your self_attn")
    copy_ffn(ours.feed_forward, ref.linear1, ref.linear2, "your feed_forward")
    for name, norm in (("norm1", ref.norm1), ("norm2", ref.norm2)):
        attribute(ours, name, nn.LayerNorm, what).load_state_dict(norm.state_dict())
    return ours, ref.train()  # training mode with dropout 0: PyTorch's plain path, no fused fast path


def _padded_input(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` ``(3, 5, d_model)``, our padding mask ``(3, 1, 1, 5)`` (True = may attend) and PyTorch's key mask."""
    real = length_mask(LENGTHS, SEQ_LEN)  # (batch, len)
    return randn(len(LENGTHS), SEQ_LEN, D_MODEL, seed=seed), real[:, None, None, :], ~real


@encoder_layer.test("output shape")
def _(EncoderLayer: Any) -> None:
    layer, _ = _encoder_layer(EncoderLayer, norm_first=False)
    x, mask, _ = _padded_input(seed=32)
    expect_shape(layer(x, mask), tuple(x.shape), "the output")


@encoder_layer.test("<pad> positions do not leak into real tokens")
def _(EncoderLayer: Any) -> None:
    for norm_first in (False, True):
        layer, _ = _encoder_layer(EncoderLayer, norm_first)
        x, mask, _ = _padded_input(seed=33)
        real = length_mask(LENGTHS, SEQ_LEN)  # (batch, len)
        y = x.clone()
        y[~real] = randn(int((~real).sum()), D_MODEL, seed=34, scale=3.0)  # other vectors at the <pad> positions
        with torch.no_grad():
            a, b = layer(x, mask), layer(y, mask)
        expect(
            not differs(a[real], b[real]),
            f"outputs at real tokens changed when only the <pad> positions changed (norm_first={norm_first}): "
            "the padding mask does not hide the <pad> keys",
        )


@encoder_layer.test("post-LN values match nn.TransformerEncoderLayer", points=2)
def _(EncoderLayer: Any) -> None:
    layer, ref = _encoder_layer(EncoderLayer, norm_first=False)
    x, mask, key_padding = _padded_input(seed=35)
    with torch.no_grad():
        out, expected = layer(x, mask), ref(x, src_key_padding_mask=key_padding)
    expect_close(out, expected, "the output (norm_first=False, with a padding mask)", atol=ATOL, rtol=RTOL)


@encoder_layer.test("pre-LN values match nn.TransformerEncoderLayer(norm_first=True)", points=2)
def _(EncoderLayer: Any) -> None:
    layer, ref = _encoder_layer(EncoderLayer, norm_first=True)
    x, mask, key_padding = _padded_input(seed=36)
    with torch.no_grad():
        out, expected = layer(x, mask), ref(x, src_key_padding_mask=key_padding)
    expect_close(out, expected, "the output (norm_first=True, with a padding mask)", atol=ATOL, rtol=RTOL)


@encoder_layer.test("gradients reach every parameter")
def _(EncoderLayer: Any) -> None:
    for norm_first in (False, True):
        layer, _ = _encoder_layer(EncoderLayer, norm_first)
        x, mask, _ = _padded_input(seed=37)
        out = layer(x, mask)
        expect_type(out, Tensor, "the output")
        project(out, seed=38).backward()
        expect_gradients(layer, f"EncoderLayer (norm_first={norm_first})")
