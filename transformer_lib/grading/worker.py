"""The producer: the process that holds a learner's code and answers the grader's calls.

``python -m transformer_lib.grading.worker RFD WFD`` (started by the batch grader inside the sandbox) executes
the code cells the grader sends, then answers calls on the names they defined — with plain data only (see
:mod:`.wire`). It never sees a test, a hidden test or a score. What the learner's code prints is kept in a
capped buffer that nobody reads.

``serve(rfd, wfd, namespace)`` is the same loop for ``check()``'s forked child, where the learner's objects are
already in memory.

This module imports only the standard library, torch and :mod:`.wire`.
"""

from __future__ import annotations

import builtins
import io
import linecache
import os
import sys
from typing import Any

import torch

from .wire import Channel, Endpoint, describe_exception

OUTPUT_LIMIT = 64 << 10  # characters of the learner's printed output kept (and then dropped)


class CappedOutput(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters written to it and drops the rest."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, text: Any) -> int:
        text = str(text)
        room = self.limit - self.size
        if room > 0:
            kept = text[:room]
            self.parts.append(kept)
            self.size += len(kept)
        return len(text)

    def flush(self) -> None:
        return None


def strip_magics(source: str) -> str:
    """A cell's source with IPython magics and shell lines replaced by ``pass`` (they don't run here)."""
    lines = []
    for line in source.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            lines.append(line[: len(line) - len(stripped)] + "pass")
        else:
            lines.append(line)
    return "\n".join(lines)


def _op_exec(namespace: dict) -> Any:
    def handler(ep: Endpoint, header: dict, blobs: list, out: list) -> dict:
        index, source = header.get("index"), header.get("source")
        if not isinstance(index, int) or not isinstance(source, str):
            raise ValueError("bad cell")
        filename = f"<cell {index}>"
        python = strip_magics(source)
        linecache.cache[filename] = (len(python), None, python.splitlines(True), filename)
        try:
            exec(compile(python, filename, "exec"), namespace)  # noqa: S102 — this process exists to run it
        except BaseException as exc:  # noqa: BLE001 — reported to the grader, who decides
            return {"ok": {"t": "tuple", "v": [type(exc).__name__, describe_exception(exc)[:300]]}}
        return {"ok": None}

    return handler


def _op_lookup(namespace: dict) -> Any:
    def handler(ep: Endpoint, header: dict, blobs: list, out: list) -> dict:
        name = header.get("name")
        if not isinstance(name, str) or name not in namespace:
            return {"ok": {"t": "tuple", "v": [False, None]}}
        return {"ok": {"t": "tuple", "v": [True, ep.encode(namespace[name], out)]}}

    return handler


def _op_seed(ep: Endpoint, header: dict, blobs: list, out: list) -> dict:
    torch.manual_seed(int(header.get("v", 0)))
    return {"ok": None}


def _op_release(ep: Endpoint, header: dict, blobs: list, out: list) -> dict:
    ep.release_all()
    return {"ok": None}


def serve(rfd: int, wfd: int, namespace: dict) -> None:
    """Answer the grader's requests on ``rfd``/``wfd`` until it closes the channel."""
    ops = {"exec": _op_exec(namespace), "lookup": _op_lookup(namespace), "seed": _op_seed, "release": _op_release}
    Endpoint(Channel(rfd, wfd), strict=False, extra_ops=ops).serve_forever()


def quiet() -> None:
    """Send this process's output to a capped buffer and /dev/null; no stdin."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    sys.stdout, sys.stderr = CappedOutput(), CappedOutput()
    sys.stdin = io.StringIO()
    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rfd, wfd = int(argv[0]), int(argv[1])
    quiet()
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        serve(rfd, wfd, namespace)
    finally:
        os._exit(0)  # no atexit handlers of the learner's code
    return 0


if __name__ == "__main__":
    main()
