"""The batch grader's sandbox: each submission's code runs in a bubblewrap (``bwrap``) jail, as a producer.

What the jail holds and allows:

* a read-only view of the system (``/usr``) and of the Python installation, and a filtered copy of the
  course library: the modules an exercise may build on, with the library's own solution of each exercise
  being graded replaced by a stub that raises (see :data:`WITHHELD`), and of the grading package only the
  producer's side (:mod:`.wire`, :mod:`.worker`) and a ``check``/``summary`` that do nothing. No hidden
  test, master notebook, grader module or solution is inside;
* a private, size-limited ``/tmp`` as the only writable place; no network, no IPC, its own PID namespace
  (every process of the submission dies with the worker: no orphans) and ``--die-with-parent``;
* an unprivileged user (``nobody``, uid 65534) when the grader runs as root, and resource limits: address
  space, CPU seconds, file size, open files and processes.

Where bubblewrap cannot run, :func:`sandbox_problem` says why and the grader refuses to grade unless the
instructor passes ``--unsafe-no-sandbox`` (the same producer then runs as a plain subprocess, with the same
filtered library and limits, but with the grader's own rights).
"""

from __future__ import annotations

import ast
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from .core import Exercise, Producer
from .wire import Channel, Endpoint

LIBRARY = Path(__file__).resolve().parent.parent
# The library modules a submission may import (and their own imports); the others are not in the sandbox.
ALLOWED_MODULES = (
    "checks",
    "utils",
    "attention",
    "embeddings",
    "masks",
    "multihead",
    "encoder",
    "decoder",
    "model",
    "decode",
)
# The library's own solution of each exercise: withheld (a stub that raises) while that exercise is graded.
WITHHELD: dict[str, tuple[str, ...]] = {
    "02.sdpa": ("attention.scaled_dot_product_attention",),
    "02.attention_module": ("attention.Attention",),
    "03.pe": ("embeddings.sinusoidal_positional_encoding",),
    "03.embeddings": ("embeddings.Embeddings",),
    "03.positional_encoding": ("embeddings.PositionalEncoding",),
    "04.padding_mask": ("masks.padding_mask",),
    "04.causal_mask": ("masks.causal_mask",),
    "04.target_mask": ("masks.target_mask",),
    "05.split_heads": ("multihead.split_heads",),
    "05.merge_heads": ("multihead.merge_heads",),
    "05.multihead": ("multihead.MultiHeadAttention", "multihead.fused_attention"),
    "06.feed_forward": ("encoder.PositionwiseFeedForward",),
    "06.add_norm": ("encoder.SublayerConnection",),
    "06.encoder_layer": ("encoder.EncoderLayer",),
    "07.decoder_mask": ("masks.target_mask",),
    "07.decoder_layer": ("decoder.DecoderLayer",),
    "07.greedy_decode": ("model.greedy_decode", "decode.greedy_search"),
    "09.length_penalty": ("decode.gnmt_length_penalty", "decode.score_sequences"),
    "09.kv_cache": ("decode.KVCache", "decode.decode_step"),
    "09.beam_search": ("decode.beam_search",),
}  # chapter 8's solutions live in transformer_lib.train, which is not in the sandbox at all
# Solutions of a chapter that another exercise of the same chapter builds on (the master's EncoderLayer uses
# the library's feed-forward network): kept while that other exercise is graded, in a sandbox of its own.
BUILDS_ON: dict[str, tuple[str, ...]] = {"06.encoder_layer": ("encoder.PositionwiseFeedForward",)}
WITHHELD_MARK = "is withheld while grading"

NOBODY = 65534
LIMITS = {
    "address_space": 1536 << 20,  # bytes: torch needs ~650 MB of address space; a 1 GB tensor does not fit
    "cpu_seconds": 600,
    "file_size": 16 << 20,
    "open_files": 256,
    "processes": 64,  # of the sandbox's user (threads count too)
}
TMP_SIZE = 64 << 20  # bytes of the private /tmp


def withheld_for(exercise: Exercise, chapter_exercises: list[Exercise]) -> frozenset[str]:
    """The library names stubbed out while ``exercise`` is graded: every solution of its chapter, except the
    ones it builds on."""
    names = {n for ex in chapter_exercises for n in WITHHELD.get(ex.id, ())}
    return frozenset(names - set(BUILDS_ON.get(exercise.id, ())))


def groups(exercises: list[Exercise]) -> list[tuple[frozenset[str], list[Exercise]]]:
    """The chapter's exercises grouped by what is withheld (one sandbox per group; usually one in all)."""
    out: dict[frozenset[str], list[Exercise]] = {}
    for ex in exercises:
        out.setdefault(withheld_for(ex, exercises), []).append(ex)
    return list(out.items())


# ------------------------------------------------------------------------------------------------ the library copy

_STUB = (
    '''
class _TLWithheld:
    """Stands for a solution of the library that is withheld while an exercise is graded."""

    _tl_name = ""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{self._tl_name} '''
    + WITHHELD_MARK
    + """: your notebook must not use the library's solution")


def _tl_withheld(name):
    return type(name.rsplit(".", 1)[-1], (_TLWithheld,), {"_tl_name": name})
"""
)

_SANDBOX_INIT = '''"""transformer_lib inside the grading sandbox: the public names, imported on first use."""

import importlib

__version__ = {version!r}
_WHERE = {where!r}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module("." + _WHERE[name], __name__), name)
    raise AttributeError(f"module 'transformer_lib' has no attribute {{name!r}} (in the grading sandbox)")
'''

_SANDBOX_GRADING = '''"""Grading inside the sandbox: check() and summary() do nothing; the grader judges."""


def check(*args, **kwargs):
    return None


def summary(*args, **kwargs):
    return None
'''


def _strip(source: str, names: set[str], module: str) -> str:
    """``source`` with the top-level definitions of ``names`` replaced by withheld stubs."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    spans = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            spans.append((start, node.end_lineno, node.name))
    for start, end, name in sorted(spans, reverse=True):
        stub = f"{name} = _tl_withheld('transformer_lib.{module}.{name}')\n"
        lines[start - 1 : end] = [stub]
    text = "".join(lines)
    if spans:  # after the `from __future__` import (which must stay first)
        body = ast.parse(text).body
        after = 0
        for node in body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                after = node.end_lineno
            elif isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) and after == 0:
                after = node.end_lineno
        out = text.splitlines(keepends=True)
        out[after:after] = [_STUB]
        text = "".join(out)
    return text


def _public_names() -> dict[str, str]:
    """{name: module} for the library's ``from .module import name`` lines whose module is allowed."""
    tree = ast.parse((LIBRARY / "__init__.py").read_text(encoding="utf-8"))
    where = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in ALLOWED_MODULES:
            for alias in node.names:
                where[alias.asname or alias.name] = node.module
    return where


def build_library(root: Path, withheld: frozenset[str]) -> Path:
    """Write the sandbox's copy of the library under ``root``; returns the directory to put on sys.path."""
    lib = root / "lib"
    package = lib / "transformer_lib"
    (package / "grading").mkdir(parents=True)
    version = "0.0"
    for line in (LIBRARY / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            version = line.split("=", 1)[1].strip().strip("\"'")
    (package / "__init__.py").write_text(_SANDBOX_INIT.format(version=version, where=_public_names()))
    for module in ALLOWED_MODULES:
        names = {n.split(".", 1)[1] for n in withheld if n.split(".", 1)[0] == module}
        source = (LIBRARY / f"{module}.py").read_text(encoding="utf-8")
        (package / f"{module}.py").write_text(_strip(source, names, module) if names else source)
    (package / "grading" / "__init__.py").write_text(_SANDBOX_GRADING)
    for name in ("wire.py", "worker.py"):
        shutil.copy(Path(__file__).resolve().parent / name, package / "grading" / name)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return lib


# ------------------------------------------------------------------------------------------------ the jail


def _mount_points() -> list[str]:
    """The directories of the Python installation the worker needs (read-only in the sandbox)."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    for entry in sys.path:
        if entry.endswith("site-packages") and os.path.isdir(entry):
            real = os.path.realpath(entry)
            if not any(real.startswith(p + os.sep) for p in paths):
                paths.add(real)
    return sorted(p for p in paths if not p.startswith("/usr"))


def bwrap_command(lib: Path, command: list[str]) -> list[str]:
    """The bubblewrap command line that runs ``command`` in the jail (see the module docstring)."""
    root = os.geteuid() == 0
    args = ["bwrap"]
    if root:  # real root does the mounts; the command then runs as nobody, outside any user namespace
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    else:
        args += ["--unshare-all"]
    args += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / name
        if target.is_symlink():
            args += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            args += ["--ro-bind", str(target), str(target)]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(TMP_SIZE), "--tmpfs", "/tmp"]
    made: set[str] = set()
    mounts = [(p, p) for p in _mount_points()] + [(str(lib), "/grader/lib")]
    for src, dest in mounts:
        for parent in reversed(PurePosixPath(dest).parents):
            if str(parent) != "/" and str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", src, dest]
    args += ["--chdir", "/tmp", "--clearenv"]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "PYTHONPATH": "/grader/lib",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for key, value in env.items():
        args += ["--setenv", key, value]
    if root:
        args += [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
    return args + command


def _limit() -> None:
    """In the child before exec: the resource limits of the submission's processes."""
    for which, value in (
        (resource.RLIMIT_AS, LIMITS["address_space"]),
        (resource.RLIMIT_CPU, LIMITS["cpu_seconds"]),
        (resource.RLIMIT_FSIZE, LIMITS["file_size"]),
        (resource.RLIMIT_NOFILE, LIMITS["open_files"]),
        (resource.RLIMIT_NPROC, LIMITS["processes"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


def sandbox_problem() -> str | None:
    """Why bubblewrap cannot run the sandbox here (None when it can)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap; or run `make system-deps`)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing: the sandbox cannot drop root's rights"
    with tempfile.TemporaryDirectory(prefix="tl-sandbox-check-") as tmp:
        os.chmod(tmp, 0o755)
        cmd = bwrap_command(Path(tmp), [sys.executable, "-c", "pass"])
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not start: {exc}"
    if result.returncode != 0:
        detail = " ".join(result.stderr.split())[:200]
        return f"bubblewrap cannot create the sandbox here (user namespaces disabled?): {detail}"
    return None


class SandboxProducer(Producer):
    """A worker process that holds one submission's code: in the bwrap jail, or (unsafe) as a plain child."""

    def __init__(self, lib: Path, sandboxed: bool = True) -> None:
        to_worker_r, to_worker_w = os.pipe()
        to_grader_r, to_grader_w = os.pipe()
        python = sys.executable
        worker = [python, "-m", "transformer_lib.grading.worker", str(to_worker_r), str(to_grader_w)]
        if sandboxed:
            cmd, env = bwrap_command(lib, worker), None
        else:
            cmd = worker
            env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib), "OMP_NUM_THREADS": "1", "HOME": str(lib.parent)}
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_worker_r, to_grader_w),
            preexec_fn=_limit,
            env=env,
            cwd=str(lib.parent) if not sandboxed else None,
            start_new_session=True,
        )
        os.close(to_worker_r)
        os.close(to_grader_w)
        self._fds = (to_grader_r, to_worker_w)
        super().__init__(Endpoint(Channel(to_grader_r, to_worker_w), strict=True))

    def execute(self, index: int, source: str, timeout_s: float) -> tuple[str, str] | None:
        """Run one code cell; None when it ran, else (exception name, description)."""
        self.endpoint.deadline = __import__("time").monotonic() + timeout_s
        try:
            reply, blobs = self.endpoint.request({"op": "exec", "index": index, "source": source})
        finally:
            self.endpoint.deadline = None
        failed: Any = self.endpoint.decode(reply.get("ok"), blobs)
        if failed is None:
            return None
        if not (isinstance(failed, tuple) and len(failed) == 2):
            return ("Error", "the worker answered nonsense")
        return str(failed[0])[:100], str(failed[1])[:300]

    def exit_code(self) -> int | None:
        try:
            return self.process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        self.close_pipes()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 9)  # bwrap and its jail: the jail's processes die with its init
            except (ProcessLookupError, PermissionError):
                self.process.kill()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
