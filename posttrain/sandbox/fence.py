"""The fence around the supervisor's memory, in the sandbox's forked child (system python, standard
library only, 3.9+): what would let the solution or the tests reach the supervisor's variables, the
end token among them, is refused from the solution's first line (see `posttrain.sandbox`).

The supervisor (harness.py) gets this file's text in its spec, loads it as a module before any
untrusted line runs, and calls `fence_introspection()` in a test run's child.
"""

from __future__ import annotations

import _thread
import gc
import sys
import types  # noqa: F401  (it reads tb_frame when imported: imported here, before the fence)

TYPE_CHECKING = False  # typing itself costs ~10 ms of imports per run
if TYPE_CHECKING:
    from collections.abc import Callable

_thread_count = _thread._count
_addaudithook, _gc_disable, _gc_enable, _gc_isenabled = sys.addaudithook, gc.disable, gc.enable, gc.isenabled
try:
    raise ValueError
except ValueError as _raised:
    _TRACEBACK = type(_raised.__traceback__)
# What hands out a frame (from any frame the supervisor's own variables, the end token among them,
# are an f_back walk away), every live object, or raw memory (ctypes, CPython's test modules).
_FENCED_EVENTS = frozenset((
    "object.__getattr__", "sys._getframe", "sys._current_frames", "sys._current_exceptions",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "import", "cpython.PyInterpreterState_New",
))  # fmt: skip
_FRAME_ATTRIBUTES = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame"))
_FUNCTION_PARTS = frozenset(("__code__", "__defaults__", "__kwdefaults__"))
# Subinterpreters too: one has no audit hook of ours, and ctypes there reaches this one's frames.
_FENCED_MODULES = frozenset((
    "ctypes", "_ctypes", "_ctypes_test", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase",
    "_testsinglephase", "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "_interpchannels",
    "_interpqueues",
))  # fmt: skip



def fence_introspection() -> tuple[Callable[[BaseException], str], Callable[[], int]]:
    """From now on, in this process, refuse frames, the collector's object lists and ctypes.

    The solution and the tests share the process with the supervisor's variables; the audit hook
    installed here (hooks can never be removed) makes the routes to them fail as they would on a
    system without them: `sys._getframe` is gone (so namedtuple, typing and enum fall back), a copy
    held elsewhere raises ValueError,
    `tb_frame` / `gi_frame` / `cr_frame` / `ag_frame` AttributeError, the collector's lists
    RuntimeError, importing ctypes ImportError. Signal handlers, the other source of frames, are
    refused by the test runs' seccomp filter. Returns the one reader of a traceback left, held by
    the supervisor's frame only, so by nothing the solution can reach, and a count of the writes to
    any function's code or defaults (the guard's watch re-reads them only after one).
    """
    unlocked, written = [False], [0]

    def hook(event: str, args: tuple) -> None:
        if event == "object.__setattr__":
            if args[1] in _FUNCTION_PARTS:
                written[0] += 1
        elif event in _FENCED_EVENTS and not unlocked[0]:
            _refuse(event, args)

    def traceback_text(exc: BaseException) -> str:
        """File, line and function of each frame of `exc`'s traceback, frames allowed for this call
        alone: nothing else runs meanwhile (no other thread, no collector, only C getters and
        exact-type formatting)."""
        if _thread_count() > 0:
            return ""
        lines, collecting = ["Traceback (most recent call last):"], _gc_isenabled()
        _gc_disable()
        unlocked[0] = True
        try:
            tb = BaseException.__dict__["__traceback__"].__get__(exc)
            while type(tb) is _TRACEBACK and len(lines) < 100:
                code = tb.tb_frame.f_code
                where = f'  File "{str.__add__("", code.co_filename)}", line {int(tb.tb_lineno)}'
                lines.append(f"{where}, in {str.__add__('', code.co_name)}")
                tb = tb.tb_next
        finally:
            unlocked[0] = False
            if collecting:
                _gc_enable()
        return "\n".join(lines) + "\n"

    _addaudithook(hook)
    # As on an interpreter without frames: inspect.currentframe() is None, logging finds no caller;
    # the hook refuses the genuine functions wherever another reference to them is kept.
    no_builtins = {"__builtins__": {}}
    sys._getframe = eval("lambda depth=0: None", no_builtins)
    for name in ("_current_frames", "_current_exceptions"):
        if hasattr(sys, name):
            setattr(sys, name, eval("lambda: {}", no_builtins))
    return traceback_text, lambda: written[0]


def _fenced_file(path: object, separator: str) -> bool:
    """Whether a module name or file path names one of the fenced modules (or the ctypes package)."""
    if type(path) is not str:
        return True
    parts = str.split(path, separator)
    return "ctypes" in parts[:-1] or str.partition(parts[-1], ".")[0] in _FENCED_MODULES


def _refuse(event: str, args: tuple) -> None:
    if event == "object.__getattr__":
        if args[1] in _FRAME_ATTRIBUTES:
            raise AttributeError(f"{args[1]} is not available in the sandbox")
    elif event == "import":  # by any name: a loader can load ctypes' files as "x._ctypes"
        name, filename = args[0], args[1]
        if _fenced_file(name, ".") or (filename is not None and _fenced_file(filename, "/")):
            raise ImportError(f"module {name!r} is not available in the sandbox")
    elif event.startswith("sys."):
        raise ValueError(f"{event} is not available in the sandbox")
    else:
        raise RuntimeError(f"{event} is not available in the sandbox")
