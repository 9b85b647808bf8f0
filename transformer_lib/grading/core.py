"""The exercise checker: exercises, their tests, and ``check()`` that runs them safely.

An :class:`Exercise` (id ``"NN.slug"``, e.g. ``"02.sdpa"``) owns a list of :class:`Test` s. Each test is a
function that receives the learner's object and raises :class:`Mismatch` with a message that says *what*
differs (a shape, some values, a mask that leaks, a gradient) — never what the answer is.

``check()`` splits producing from judging: on Linux it forks a child that holds the learner's object and only
answers calls with plain data (:mod:`.worker`, :mod:`.wire`), while the tests run here, in the caller's
process, on a proxy of it. So a learner's code that loops forever, calls ``sys.exit`` or kills the interpreter
is reported as such and never takes the notebook's kernel down, and it cannot reach the tests to mark them
passed. ``check()`` is still a self-check, not proof of work: it runs in the learner's own kernel. Where
``fork`` is not available (Windows, and macOS where it is unsafe), the tests call the object directly in a
daemon thread with the same time limit; a hung thread keeps running in the background until the kernel
restarts. The batch grader (:mod:`.batch`) uses the same split with a sandboxed worker.

This module imports only the standard library, torch, :mod:`.wire` and :mod:`.worker`.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import os
import pkgutil
import queue
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .wire import Channel, Endpoint, PeerError, PeerGone, PeerTimeout, ProtocolError, describe_exception

__all__ = [
    "Mismatch",
    "Test",
    "Exercise",
    "TestOutcome",
    "CheckResult",
    "REGISTRY",
    "register",
    "get_exercise",
    "exercises_of_chapter",
    "load_hidden",
    "check",
    "summary",
    "expect",
    "expect_type",
    "expect_shape",
    "expect_close",
    "expect_equal",
]

# Statuses of one test's outcome.
PASSED, FAILED, ERROR, TIMEOUT, NOT_IMPLEMENTED, NOT_RUN = (
    "passed",
    "failed",
    "error",
    "timeout",
    "not implemented",
    "not run",
)
STATUSES = (PASSED, FAILED, ERROR, TIMEOUT, NOT_IMPLEMENTED, NOT_RUN)
ICONS = {PASSED: "✅", FAILED: "❌", ERROR: "💥", TIMEOUT: "⏱", NOT_IMPLEMENTED: "✏️", NOT_RUN: "⏸"}

# Forced isolation for tests of the checker itself: "fork" or "thread" (default: fork where it is safe).
ISOLATION_ENV = "TRANSFORMER_LIB_GRADING_ISOLATION"
_ID_PATTERN = re.compile(r"^(\d\d)\.[a-z0-9_]+$")
_MAX_MESSAGE = 400  # characters of a learner-facing message


class Mismatch(AssertionError):
    """A test found a wrong answer; the message says what differs (never the expected answer)."""


@dataclass(frozen=True)
class Test:
    """One test of an exercise: ``run(learner_object)`` raises :class:`Mismatch` on a wrong answer."""

    name: str
    run: Callable[[Any], None]
    points: int = 1
    hidden: bool = False


@dataclass
class Exercise:
    """A graded exercise: the learner defines ``target`` in the notebook; ``tests`` check it.

    ``timeout_s`` is the time limit of all the exercise's tests together (public and hidden).
    """

    id: str
    title: str
    target: str
    timeout_s: float = 20.0
    tests: list[Test] = field(default_factory=list)

    @property
    def chapter(self) -> int:
        """The chapter number, from the id ``"NN.slug"``."""
        return int(self.id[:2])

    def test(
        self, name: str, points: int = 1, hidden: bool = False
    ) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
        """Decorator that adds the decorated function as a test; returns the function unchanged.

        A second test with the same name (and the same visibility) is an error: a typo, or a hidden-test
        file imported twice.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{self.id}: a test needs a non-empty name, got {name!r}")
        if isinstance(points, bool) or not isinstance(points, int) or points <= 0:
            raise ValueError(f"{self.id}: test {name!r} needs a positive integer number of points, got {points!r}")

        def decorator(fn: Callable[[Any], None]) -> Callable[[Any], None]:
            if not callable(fn):
                raise TypeError(f"{self.id}: test {name!r} must decorate a function, got {type(fn).__name__}")
            if any(t.name == name and t.hidden == hidden for t in self.tests):
                raise ValueError(f"{self.id} already has a {'hidden' if hidden else 'public'} test named {name!r}")
            self.tests.append(Test(name=name, run=fn, points=points, hidden=hidden))
            return fn

        return decorator

    def tests_to_run(self, hidden: bool = False) -> list[Test]:
        """The public tests, followed by the hidden ones when ``hidden`` is true."""
        public = [t for t in self.tests if not t.hidden]
        return public + [t for t in self.tests if t.hidden] if hidden else public

    def max_score(self, hidden: bool = False) -> int:
        """Total points of the tests that :func:`check` runs with this ``hidden`` flag."""
        return sum(t.points for t in self.tests_to_run(hidden))


@dataclass(frozen=True)
class TestOutcome:
    """What happened to one test: ``status`` is one of passed, failed, error, timeout, not implemented, not run."""

    name: str
    status: str
    message: str
    points: int
    hidden: bool


@dataclass
class CheckResult:
    """The result of :func:`check` for one exercise."""

    exercise_id: str
    title: str
    outcomes: list[TestOutcome]

    @property
    def passed(self) -> bool:
        """True when every test that was run passed."""
        return bool(self.outcomes) and all(o.status == PASSED for o in self.outcomes)

    @property
    def score(self) -> int:
        """Points of the passed tests."""
        return sum(o.points for o in self.outcomes if o.status == PASSED)

    @property
    def max_score(self) -> int:
        """Points of all the tests that were run (or should have been)."""
        return sum(o.points for o in self.outcomes)

    @property
    def not_implemented(self) -> bool:
        """True when the learner's stub still raises ``NotImplementedError``."""
        return any(o.status == NOT_IMPLEMENTED for o in self.outcomes)

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable): id, title, passed, score, max_score and the outcomes."""
        return {
            "exercise_id": self.exercise_id,
            "title": self.title,
            "passed": self.passed,
            "score": self.score,
            "max_score": self.max_score,
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    def __repr__(self) -> str:
        state = "not implemented yet" if self.not_implemented else ("passed" if self.passed else "not passed yet")
        return f"<CheckResult {self.exercise_id}: score {self.score}/{self.max_score}, {state}>"

    def _ipython_display_(self) -> None:
        """A notebook shows the report once: not again when ``check(...)`` ends a cell that printed it."""
        if getattr(self, "_printed", False):
            self._printed = False
        else:
            print(format_result(self))


# ---------------------------------------------------------------------------------------------------------
# Registry

REGISTRY: dict[str, Exercise] = {}
_RESULTS: dict[str, CheckResult] = {}  # this session's latest result per exercise id (for summary())
_LOADED_HIDDEN: set[Path] = set()  # hidden-test files already imported (importing twice would duplicate tests)


def register(exercise: Exercise) -> Exercise:
    """Add ``exercise`` to :data:`REGISTRY`; a second exercise with the same id is a ``ValueError``."""
    if not isinstance(exercise, Exercise):
        raise TypeError(f"register() needs an Exercise, got {type(exercise).__name__}")
    if not _ID_PATTERN.match(exercise.id):
        raise ValueError(f"exercise id must look like 'NN.slug' (e.g. '02.sdpa'), got {exercise.id!r}")
    if exercise.id in REGISTRY:
        raise ValueError(f"an exercise with id {exercise.id!r} is already registered ({REGISTRY[exercise.id].title!r})")
    if not exercise.target.isidentifier():
        raise ValueError(f"{exercise.id}: target must be a Python name, got {exercise.target!r}")
    if not exercise.timeout_s > 0:
        raise ValueError(f"{exercise.id}: timeout_s must be positive, got {exercise.timeout_s!r}")
    REGISTRY[exercise.id] = exercise
    return exercise


def _chapter_modules() -> list[str]:
    """Names of the per-chapter exercise modules ``chNN`` of this package."""
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if re.fullmatch(r"ch\d\d", m.name))


def _import_chapter(chapter: int) -> bool:
    """Import ``transformer_lib.grading.chNN`` (registering its exercises); False when there is none."""
    name = f"ch{chapter:02d}"
    if name not in _chapter_modules():
        return False
    importlib.import_module(f"{__package__}.{name}")
    return True


def get_exercise(exercise_id: str) -> Exercise:
    """The exercise with this id, importing its chapter's module on first use.

    An unknown id is a ``KeyError`` that lists the known ids.
    """
    if not isinstance(exercise_id, str):
        raise TypeError(f"an exercise id is a string like '02.sdpa', got {type(exercise_id).__name__}")
    if exercise_id not in REGISTRY:
        match = _ID_PATTERN.match(exercise_id)
        if match:
            _import_chapter(int(match.group(1)))
    if exercise_id not in REGISTRY:
        for name in _chapter_modules():  # import them all, so the message can list every known id
            _import_chapter(int(name[2:]))
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise KeyError(f"unknown exercise id {exercise_id!r}; known ids: {known}")
    return REGISTRY[exercise_id]


def exercises_of_chapter(chapter: int) -> list[Exercise]:
    """The exercises of one chapter, in the order they were registered (empty if the chapter has none)."""
    _import_chapter(chapter)
    return [ex for ex in REGISTRY.values() if ex.chapter == chapter]


def load_hidden(directory: str | os.PathLike) -> int:
    """Import every ``*.py`` file of ``directory``; each adds hidden tests to registered exercises.

    A file is imported once per process (importing it again would add its tests twice). Returns the number
    of files in the directory that are loaded. A missing directory is a ``FileNotFoundError``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"hidden-test directory {directory} does not exist")
    files = sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))
    for path in files:
        path = path.resolve()
        if path in _LOADED_HIDDEN:
            continue
        name = f"_transformer_lib_hidden_{path.stem}_{abs(hash(str(path))) % 10**8}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import hidden tests from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _LOADED_HIDDEN.add(path)
    return len(files)


# ---------------------------------------------------------------------------------------------------------
# Running the tests


def _short(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_exception(exc: BaseException) -> str:
    return _short(describe_exception(exc)) if not isinstance(exc, PeerError) else _short(exc.description)


def _stopped_message(exc: BaseException, producer: Producer | None) -> str:
    """Why the producer stopped answering: 'timeout', or a sentence for the learner."""
    if isinstance(exc, PeerTimeout):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return f"the process running your code sent a malformed answer ({_short(str(exc), 100)})"
    return _crash_message(producer.exit_code() if producer is not None else None)


def _run_tests(tests: list[Test], obj: Any, send: Callable[[dict], None], producer: Producer | None = None) -> str:
    """Run ``tests`` in order, sending one plain-data outcome per test; stops at a NotImplementedError.

    With a ``producer`` (the process that holds the learner's code; ``obj`` is then a proxy), each test starts
    by seeding its random numbers; the run stops when the producer times out or dies, and the return value
    says why ('' when every test ran).
    """
    for i, t in enumerate(tests):
        torch.manual_seed(0)  # learner code that draws random numbers (nn.Linear's init, ...) is repeatable
        try:
            if producer is not None:
                producer.seed(0)
            t.run(obj)
        except (PeerTimeout, PeerGone, ProtocolError) as exc:
            return _stopped_message(exc, producer)
        except Mismatch as exc:
            status, message = FAILED, _short(str(exc))
        except NotImplementedError:
            send({"index": i, "status": NOT_IMPLEMENTED, "message": "not implemented yet"})
            return ""
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the learner's code must not stop us
            status, message = ERROR, _describe_exception(exc)
        else:
            status, message = PASSED, ""
        send({"index": i, "status": status, "message": message})
    return ""


class Producer:
    """The process that holds the learner's code, seen from the judge: an endpoint and a way to stop it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def seed(self, value: int) -> None:
        self.endpoint.request({"op": "seed", "v": value})

    def lookup(self, name: str) -> tuple[bool, Any]:
        reply, blobs = self.endpoint.request({"op": "lookup", "name": name})
        found, value = self.endpoint.decode(reply.get("ok"), blobs)
        return bool(found), value

    def release(self) -> None:
        if not self.endpoint.dead:
            self.endpoint.request({"op": "release"})
        self.endpoint.release_all()

    def exit_code(self) -> int | None:
        return None

    def close(self) -> None:
        return None

    def close_pipes(self) -> None:
        """Close this side's ends of the pipes to the producer (``self._fds``), once."""
        for fd in getattr(self, "_fds", ()):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = ()


class ForkedProducer(Producer):
    """``check()``'s producer: a forked child that holds the learner's object (it answers, never judges)."""

    def __init__(self, obj: Any) -> None:
        for stream in (sys.stdout, sys.stderr):  # anything buffered would otherwise be written twice
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answer the parent's calls on the learner's object, then _exit
            try:
                os.close(to_child_w)
                os.close(to_parent_r)
                from .worker import quiet, serve

                quiet()
                serve(to_child_r, to_parent_w, {"obj": obj})
            finally:
                os._exit(0)  # never run the parent's atexit handlers, kernel cleanup or pytest teardown here
        os.close(to_child_r)
        os.close(to_parent_w)
        self.pid, self._status = pid, None
        self._fds = (to_parent_r, to_child_w)
        super().__init__(Endpoint(Channel(to_parent_r, to_child_w), strict=True))

    def exit_code(self) -> int | None:
        self._reap(block=True)
        if self._status is None:
            return None
        return os.waitstatus_to_exitcode(self._status)

    def _reap(self, block: bool) -> None:
        if self._status is not None:
            return
        deadline = time.monotonic() + (5 if block else 0)
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self._status = status
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def close(self) -> None:
        if self._status is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
            self._reap(block=True)
        self.close_pipes()


def run_with_producer(tests: list[Test], producer: Producer, name: str, timeout_s: float) -> tuple[list[dict], str]:
    """Run ``tests`` here on the producer's object ``name``; returns the outcomes and why it stopped early."""
    received: list[dict] = []
    producer.endpoint.deadline = time.monotonic() + timeout_s
    try:
        found, proxy = producer.lookup(name)
        if not found:
            return [], f"{name} is not defined"
        stopped = _run_tests(tests, proxy, received.append, producer)
    except (PeerTimeout, PeerGone, ProtocolError) as exc:
        stopped = _stopped_message(exc, producer)
    finally:
        producer.endpoint.deadline = None
    return received, stopped


def _isolation() -> str:
    forced = os.environ.get(ISOLATION_ENV, "").strip().lower()
    if forced in ("fork", "thread"):
        return forced
    if forced:
        raise ValueError(f"{ISOLATION_ENV} must be 'fork' or 'thread', got {forced!r}")
    fork_ok = hasattr(os, "fork") and sys.platform.startswith("linux")
    return "fork" if fork_ok else "thread"


def _collect_fork(tests: list[Test], obj: Any, timeout_s: float) -> tuple[list[dict], str]:
    """Run the tests here on a forked child that holds ``obj``; returns the outcomes and why it stopped early."""
    producer = ForkedProducer(obj)
    try:
        return run_with_producer(tests, producer, "obj", timeout_s)
    finally:
        producer.close()


def _crash_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the process running your code was killed by {name} (a crash, or too much memory)"
    return f"the process running your code ended abruptly (exit code {exitcode}; did your code call os._exit?)"


def _collect_thread(tests: list[Test], obj: Any, timeout_s: float) -> tuple[list[dict], str]:
    """Run the tests in a daemon thread (no fork): the learner's object is called directly; a hung thread keeps
    running. (Where fork is missing, check() is a self-check without the produce/judge split.)"""
    outbox: queue.Queue = queue.Queue()
    done = threading.Event()

    def body() -> None:
        try:
            _run_tests(tests, obj, outbox.put)
        finally:
            done.set()

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()  # the learner's prints are captured, as in the child
    received: list[dict] = []
    stopped = ""
    try:
        threading.Thread(target=body, daemon=True, name="transformer_lib-check").start()
        deadline = time.monotonic() + timeout_s
        while len(received) < len(tests):
            remaining = deadline - time.monotonic()
            try:
                message = outbox.get(timeout=max(remaining, 0.0)) if remaining > 0 else outbox.get_nowait()
            except queue.Empty:
                stopped = "" if done.is_set() and outbox.empty() else "timeout"
                break
            received.append(message)
            if message["status"] == NOT_IMPLEMENTED:
                break
    finally:
        sys.stdout, sys.stderr = saved
    return received, stopped


def _format_number(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def check(
    exercise_id: str,
    obj: Any,
    *,
    hidden: bool = False,
    timeout_s: float | None = None,
    verbose: bool = True,
) -> CheckResult:
    """Run the tests of exercise ``exercise_id`` against the learner's ``obj`` and report.

    Prints (when ``verbose``) one line per test — ✅ passed, ❌ wrong with what differs, 💥 raised an error,
    ⏱ timed out — and the score. A stub that still raises ``NotImplementedError`` reports "not implemented yet"
    with score 0; nothing the learner's code does (raise, loop forever, exit) makes ``check`` raise.
    ``hidden=True`` also runs the hidden tests (the batch grader does). ``timeout_s`` overrides the
    exercise's time limit for all its tests together. The result is also kept for :func:`summary`.
    """
    exercise = get_exercise(exercise_id)
    limit = exercise.timeout_s if timeout_s is None else timeout_s
    if not (isinstance(limit, (int, float)) and limit > 0 and math.isfinite(limit)):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    tests = exercise.tests_to_run(hidden)
    collect = _collect_fork if _isolation() == "fork" else _collect_thread
    received, stopped = collect(tests, obj, float(limit)) if tests else ([], "")

    outcomes = outcomes_of(tests, received, stopped, limit)
    result = CheckResult(exercise.id, exercise.title, outcomes)
    _RESULTS[exercise.id] = result
    if verbose:
        print(format_result(result))
        result._printed = True  # type: ignore[attr-defined]  # see CheckResult._ipython_display_
    return result


def outcomes_of(tests: list[Test], received: list[dict], stopped: str, limit: float) -> list[TestOutcome]:
    """One outcome per test from the received outcomes and why the run stopped early ('' if it did not)."""
    outcomes: list[TestOutcome] = []
    for i, t in enumerate(tests):
        if i < len(received):
            status, message = received[i]["status"], received[i]["message"]
        elif i == len(received) and stopped == "timeout":
            status, message = TIMEOUT, f"timed out after {_format_number(limit)} s (an endless loop, or far too slow?)"
        elif i == len(received) and stopped:
            status, message = ERROR, stopped
        else:
            status, message = NOT_RUN, "not run"
        outcomes.append(TestOutcome(t.name, status, message, t.points, t.hidden))
    return outcomes


def format_result(result: CheckResult) -> str:
    """The learner-facing report of one :class:`CheckResult` (what ``check`` prints)."""
    lines = [f"{result.exercise_id} — {result.title}"]
    if result.not_implemented:
        lines.append(
            f"  {ICONS[NOT_IMPLEMENTED]} not implemented yet — "
            "replace the `raise NotImplementedError(...)` line with your code"
        )
    else:
        for o in result.outcomes:
            label = f"{o.name} (hidden)" if o.hidden else o.name
            detail = "" if o.status == PASSED else f" — {o.message}"
            lines.append(f"  {ICONS[o.status]} {label}{detail}")
    lines.append(f"  score {result.score}/{result.max_score}")
    return "\n".join(lines)


class Summary(dict):
    """The dict :func:`summary` returns; as a notebook cell's last value it is not shown again (it was printed)."""

    _printed = False

    def _ipython_display_(self) -> None:
        if self._printed:
            self._printed = False
        else:
            print(f"score {self['score']}/{self['max_score']}")


def summary(chapter: int | None = None) -> dict:
    """Print this session's scores for the exercises of ``chapter`` (all checked ones if None); return them.

    Returns ``{"exercises": {id: {"title", "score", "max_score", "checked"}}, "score": total, "max_score": total}``;
    an exercise not checked yet counts 0 out of its public points.
    """
    if chapter is None:
        exercises = [REGISTRY[i] for i in _RESULTS]
    else:
        if isinstance(chapter, bool) or not isinstance(chapter, int):
            raise TypeError(f"chapter must be an integer, got {chapter!r}")
        exercises = exercises_of_chapter(chapter)
    rows: dict[str, dict] = {}
    for ex in exercises:
        result = _RESULTS.get(ex.id)
        if result is None:
            rows[ex.id] = {"title": ex.title, "score": 0, "max_score": ex.max_score(), "checked": False}
        else:
            rows[ex.id] = {"title": ex.title, "score": result.score, "max_score": result.max_score, "checked": True}
    total, total_max = sum(r["score"] for r in rows.values()), sum(r["max_score"] for r in rows.values())
    heading = f"Chapter {chapter} exercises" if chapter is not None else "Exercises checked in this session"
    print(heading)
    if not rows:
        print("  (none)")
    width = max([len(f"{i} — {r['title']}") for i, r in rows.items()] + [10])
    for ex_id, r in rows.items():
        label = f"{ex_id} — {r['title']}"
        if not r["checked"]:
            state = f"not checked yet (0/{r['max_score']})"
        elif _RESULTS[ex_id].not_implemented:
            state = f"{ICONS[NOT_IMPLEMENTED]} not implemented yet (0/{r['max_score']})"
        else:
            icon = ICONS[PASSED] if r["score"] == r["max_score"] else ICONS[FAILED]
            state = f"{icon} {r['score']}/{r['max_score']}"
        print(f"  {label:<{width}}  {state}")
    print(f"  {'total':<{width}}  {total}/{total_max}")
    result = Summary(exercises=rows, score=total, max_score=total_max)
    result._printed = True  # printed above: a notebook does not show it twice
    return result


def _reset_session() -> None:
    """Forget this session's results (for tests of the checker)."""
    _RESULTS.clear()


# ---------------------------------------------------------------------------------------------------------
# Helpers for test authors: each raises Mismatch with a message that says what differs, not the answer.


def expect(cond: bool, message: str) -> None:
    """Raise :class:`Mismatch` with ``message`` unless ``cond`` is true."""
    if not cond:
        raise Mismatch(message)


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def expect_type(x: Any, types: type | tuple[type, ...], what: str) -> None:
    """``x`` must be an instance of ``types``: "the output should be a Tensor, got tuple"."""
    if not isinstance(x, types):
        raise Mismatch(f"{what} should be a {_type_names(types)}, got {type(x).__name__}")


def expect_shape(t: Any, shape: Iterable[int], what: str) -> None:
    """``t`` must be a tensor of exactly ``shape``."""
    expect_type(t, Tensor, what)
    shape = tuple(shape)
    if tuple(t.shape) != shape:
        raise Mismatch(f"{what} has shape {tuple(t.shape)}, expected {shape}")


def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception:  # noqa: BLE001
        raise Mismatch(f"{what} should be a Tensor, got {type(x).__name__}") from None


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape)) if shape else ()


def expect_close(actual: Any, expected: Any, what: str, atol: float = 1e-5, rtol: float = 1e-5, hint: str = "") -> None:
    """``actual`` must be a tensor of ``expected``'s shape with values within ``atol + rtol * |expected|``.

    The message reports the largest |difference| and where it is (or where a NaN/inf appears), not the values.
    """
    expect_type(actual, Tensor, what)
    expected = _as_tensor(expected, "the reference")
    if tuple(actual.shape) != tuple(expected.shape):
        raise Mismatch(f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if not (actual.dtype.is_floating_point or actual.dtype.is_complex) and expected.dtype.is_floating_point:
        raise Mismatch(f"{what} has dtype {actual.dtype}, expected a floating-point tensor")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    suffix = f" — {hint}" if hint else ""
    bad_nan = torch.isnan(a) & ~torch.isnan(e)
    if bad_nan.any():
        where = _index(int(bad_nan.flatten().nonzero()[0]), tuple(a.shape))
        raise Mismatch(f"{what} contains NaN (first at index {where}){suffix}")
    both_inf = torch.isinf(a) & torch.isinf(e) & (torch.sign(a) == torch.sign(e))
    nan_ok = torch.isnan(a) & torch.isnan(e)
    diff = (a - e).abs().masked_fill(both_inf | nan_ok, 0.0)
    diff = torch.nan_to_num(diff, nan=math.inf)
    tol = atol + rtol * e.abs().masked_fill(both_inf | nan_ok, 0.0)
    tol = torch.nan_to_num(tol, nan=0.0, posinf=math.inf)
    bad = diff > tol
    if bad.any():
        worst = int(torch.where(bad, diff, torch.zeros_like(diff)).flatten().argmax())
        where = _index(worst, tuple(a.shape))
        count, total = int(bad.sum()), bad.numel()
        raise Mismatch(
            f"{what}: values differ — max |difference| {diff.flatten()[worst].item():.3g} at index {where} "
            f"({count} of {total} entries off){suffix}"
        )


def expect_equal(actual: Any, expected: Any, what: str, hint: str = "") -> None:
    """Exact equality; for tensors the shape, the dtype kind and every entry (reports where they differ)."""
    suffix = f" — {hint}" if hint else ""
    if isinstance(expected, Tensor):
        expect_type(actual, Tensor, what)
        if tuple(actual.shape) != tuple(expected.shape):
            raise Mismatch(f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}{suffix}")
        if (actual.dtype == torch.bool) != (expected.dtype == torch.bool):
            kind = "a boolean" if expected.dtype == torch.bool else "a non-boolean"
            raise Mismatch(f"{what} has dtype {actual.dtype}, expected {kind} tensor{suffix}")
        differ = actual.detach().cpu() != expected.detach().cpu()
        if differ.any():
            where = _index(int(differ.flatten().nonzero()[0]), tuple(actual.shape))
            raise Mismatch(
                f"{what}: {int(differ.sum())} of {differ.numel()} entries differ (first at index {where}){suffix}"
            )
        return
    try:
        same = bool(actual == expected)
    except Exception:  # noqa: BLE001
        same = False
    if not same:
        raise Mismatch(f"{what} is not the expected value (got {_short(repr(actual), 80)}){suffix}")
