"""The supervisor that runs INSIDE the sandbox (system python, standard library only, 3.9+).

It is never imported by posttrain: the parent passes this file's text to `python3 -I -S -c` in
the sandbox. Every untrusted line runs in a forked child; this supervisor never executes any, so
only it can write the verdict record (see `posttrain.sandbox` for the whole design).

argv: SPEC_FD SENTINEL_FD PROGRESS_FD RESULT_FD. The spec (marshal, written by the trusted parent)
holds the mode ("program" | "tests" | "io"), the source, the instrumented tests, the limits and the
per-case inputs. The sentinel is read only after every child has exited, so no untrusted process
ever has it in memory. PROGRESS_FD (a pipe the parent watches) gets `started`, then `run` before
each child: the parent's own wall clock restarts there. The record goes to RESULT_FD as
`SENTINEL repr(dict)`; events from a child come through a pipe as lines `ok TOKEN` (an assert
held), `end TOKEN` (the test code ran to its end), `error TYPE MESSAGE`.
"""

# ruff: noqa: SIM105  (contextlib costs milliseconds of imports on every sandboxed run)

from __future__ import annotations

import _signal
import _thread
import builtins
import marshal
import os
import resource
import select
import sys
import time
from _operator import is_ as _is
from itertools import chain as _chain
from itertools import compress as _compress
from itertools import repeat as _repeat

TYPE_CHECKING = False  # typing itself costs ~10 ms of imports per run
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import CodeType

_EVENT_CAP = 1 << 20  # bytes of child events read at most
_EVENTS_FD = 3  # the child's end of the events pipe
_SIGKILL, _SIGXFSZ = 9, 25
# Bound before any untrusted code runs: the solution may replace the os / sys attributes.
_exit, _write, _gettrace, _getprofile = os._exit, os.write, sys.gettrace, sys.getprofile
_thread_count = _thread._count
# Exact types, compared by identity (a metaclass can make `type(x) in {int}` true for any class).
_ATOMS = {id(t) for t in (int, float, complex, str, bytes, bool, type(None), range)}
_DICT_VIEWS = {id(type(getattr({}, view)())): view for view in ("keys", "values", "items")}
_MUTABLE = {id(list), id(dict), id(set), id(bytearray), *_DICT_VIEWS}
_CONTAINERS = _MUTABLE | {id(tuple), id(frozenset)}
_ATOMS_OR_TUPLE = _ATOMS | {id(tuple)}
_CALLABLES = {id(type(len)), id(type(lambda: None))}
_GENERATOR = type(x for x in ())
_IMMUTABLE_TYPE, _HEAP_TYPE = 1 << 8, 1 << 9
# Hooks that would run the solution's code in the middle of the test code (and a trace or
# monitoring callback can even move a frame's f_lineno, i.e. jump over asserts): gone for the tests.
_HOOK_SETTERS = ("settrace", "setprofile", "monitoring", "_settraceallthreads", "_setprofileallthreads",
                 "addaudithook")  # fmt: skip


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _set_limits(lim: dict) -> None:
    """Limits for the supervisor and, inherited, every child (file size: see `_run_child`)."""
    pairs = [
        (resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1),
        (resource.RLIMIT_AS, lim["memory_bytes"], lim["memory_bytes"]),
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if lim["nproc"]:
        pairs.append((resource.RLIMIT_NPROC, lim["nproc"], lim["nproc"]))
    for which, soft, hard in pairs:
        resource.setrlimit(which, (soft, hard))


def _write_files(files: dict) -> None:
    for name, text in files.items():
        folder = os.path.dirname(name)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(name, "w", encoding="utf-8") as handle:
            handle.write(text)


# ---------------------------------------------------------------- inside the forked child


def _emit(line: str) -> None:
    try:
        _write(_EVENTS_FD, line.encode("utf-8", "replace")[:4096] + b"\n")
    except OSError:
        pass


def _report_exception(exc: BaseException) -> None:
    try:  # str() runs the solution's __str__, which may itself raise
        message = " ".join(str(exc).split())[:300]
    except BaseException:
        message = "(unprintable)"
    _emit(f"error {type(exc).__name__} {message}")
    try:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    except BaseException:  # a broken stderr must not hide the verdict
        pass


def _violation(message: str) -> None:
    """The solution tampered with the runtime or handed a test a non-data object: end the child.

    It exits rather than raises, so no `except` in the test code can swallow it and go on to the end.
    """
    _emit(f"error SandboxViolation {message}")
    try:
        _write(2, f"SandboxViolation: {message}\n".encode("utf-8", "replace"))
    except BaseException:
        pass
    _exit(1)


def _refuse_hook(*args: object, **kwargs: object) -> None:
    _violation("the solution tried to install a trace, profile, monitoring or audit hook")


def _signal_handlers() -> list:
    return [_signal.getsignal(number) for number in range(1, _signal.NSIG)]


def _type_name(kind: type) -> str:
    try:  # the descriptor of `type` itself: no metaclass code runs
        return str.__add__("", type.__dict__["__name__"].__get__(kind))
    except BaseException:
        return "unknown"


def _parts(item: object, kind: int) -> object:
    """The objects a container holds, iterable twice in the same order (a dict's keys and values
    alternate); lists, tuples and sets are their own parts (nothing runs between the two passes)."""
    if kind == id(dict):
        return list(_chain.from_iterable(dict.items(item)))
    if _DICT_VIEWS.get(kind) == "items":
        return list(_chain.from_iterable(item))
    if kind in _DICT_VIEWS:
        return list(item)
    return () if kind == id(bytearray) else item


def _nested(parts: object) -> list:
    """The parts that need a walk of their own: neither atoms nor tuples of atoms (such a tuple can
    be shared as it is). Checked in C for the usual shapes: one atom type, or pairs of atoms."""
    first = type(next(iter(parts), 0))
    if id(first) in _ATOMS and all(map(_is, map(type, parts), _repeat(first))):
        return []
    kinds = set(map(id, map(type, parts)))
    if kinds <= _ATOMS:
        return []
    if kinds <= _ATOMS_OR_TUPLE:
        tuples = _compress(parts, map(_is, map(type, parts), _repeat(tuple)))
        if set(map(id, map(type, _chain.from_iterable(tuples)))) <= _ATOMS:
            return []
    return [part for part in parts if id(type(part)) not in _ATOMS]


def _walk(value: object) -> list | type:
    """(container, kind, parts, flat: no part needs a copy) for every container in `value`, each
    after the immutable ones it holds; or the first type that is not built-in data.

    Only built-in code runs here (exact built-in types, identity tests): nothing of the solution's.
    Mutable containers are listed on first sight and their contents walked later, so every cycle
    (which must pass through one) is broken by them.
    """
    order, seen, pending = [], set(), [value]
    while pending:
        stack: list = [(pending.pop(), None)]
        while stack:
            item, entry = stack.pop()
            kind = id(type(item))
            if entry is not None:
                order.append(entry)
            elif kind in _ATOMS or id(item) in seen:
                continue
            elif kind not in _CONTAINERS:
                return type(item)
            else:
                seen.add(id(item))
                parts = _parts(item, kind)
                nested = _nested(parts)
                entry = (item, kind, parts, not nested)
                if kind in _MUTABLE:
                    order.append(entry)
                    pending.extend(nested)
                else:
                    stack.append((None, entry))
                    stack.extend((part, None) for part in nested)
    return order


def _plain_copy(value: object, name: str) -> object:
    """A copy of built-in data made of new objects, so the solution keeps no handle on what the
    tests compare; anything else is a violation (an always-equal `__eq__` never reaches a test)."""
    order = _walk(value)
    if type(order) is not list:
        _violation(f"{name} returned a {_type_name(order)} object; only built-in data types are accepted")
    # Originals stay alive throughout, so an atom's id is never a container's: get(id, atom) is the atom.
    copies, fills = {}, []
    for item, kind, parts, flat in order:
        if kind == id(bytearray):
            copies[id(item)] = bytearray(item)
        elif kind in _MUTABLE:
            shell = {} if kind in _DICT_VIEWS else type(item)()
            view = _DICT_VIEWS.get(kind)
            copies[id(item)] = getattr(shell, view)() if view else shell
            fills.append((kind, shell, parts, flat))
        elif flat:  # a tuple or frozenset of atoms: nothing in it can change
            copies[id(item)] = item
        else:
            copies[id(item)] = type(item)(map(copies.get, map(id, parts), parts))
    for kind, shell, raw, flat in fills:
        parts = raw if flat else list(map(copies.get, map(id, raw), raw))
        if kind == id(list):
            shell.extend(parts)
        elif kind == id(set):
            shell.update(parts)
        elif _DICT_VIEWS.get(kind) == "keys":
            shell.update(dict.fromkeys(parts))
        elif _DICT_VIEWS.get(kind) == "values":
            shell.update(enumerate(parts))
        else:
            shell.update(zip(parts[::2], parts[1::2]))
    return copies.get(id(value), value)


class _Watch:
    """Snapshots of builtins and loaded modules, checked after the solution and every call."""

    def __init__(self) -> None:
        self.builtins = dict(builtins.__dict__)
        self.handlers = _signal_handlers()
        self.modules: dict = {}
        self.add_new_modules()

    def add_new_modules(self) -> None:
        for name, module in list(sys.modules.items()):
            if name not in self.modules and name not in ("__main__", "sys"):
                self.modules[name] = (module, dict(getattr(module, "__dict__", {})))

    def check(self) -> None:
        if _gettrace() is not None or _getprofile() is not None:
            _violation("the solution installed a trace or profile hook")
        if _thread_count() > 0:
            _violation("the solution left a thread running")
        if any(now is not before for now, before in zip(_signal_handlers(), self.handlers)):
            _violation("the solution installed a signal handler")  # it would run amid the test code
        # Identity of every name that existed before; new names can't change what tests call.
        current = builtins.__dict__
        if any(current.get(k, self) is not v for k, v in self.builtins.items()):
            _violation("the solution modified builtins")
        for name, (module, snapshot) in self.modules.items():
            current = getattr(module, "__dict__", {})
            if sys.modules.get(name) is not module or any(
                current.get(k, self) is not v for k, v in snapshot.items()
            ):
                _violation(f"the solution modified module {name!r}")


def _is_builtin_iterator(kind: type) -> bool:
    """A built-in iterator type (generator, map, zip, list_iterator...): next() is all it offers."""
    if type(kind) is not type:  # a metaclass could run code on the attribute reads below
        return False
    flags = kind.__flags__
    return bool(flags & _IMMUTABLE_TYPE or not flags & _HEAP_TYPE) and hasattr(kind, "__next__")


def _export(value: object, name: str, watch: _Watch) -> object:
    """What a test receives from the solution: a copy of built-in data; an iterator's items one by
    one, each made under the guard; a callable, guarded in turn."""
    kind = type(value)
    if id(kind) in _CALLABLES:
        return _guard(value, name, watch)
    if _is_builtin_iterator(kind):
        return _guarded_items(value, name, watch)
    return _plain_copy(value, name)


def _guarded_items(iterator: object, name: str, watch: _Watch) -> object:
    """A generator over the solution's iterator (`list(countdown(3))`, `next(gen)`, `send` work)."""
    send = iterator.send if type(iterator) is _GENERATOR else None
    try:
        sent = None
        while True:
            watch.add_new_modules()
            try:
                item = next(iterator) if sent is None or send is None else send(sent)
            except StopIteration as stop:
                return _plain_copy(stop.value, name)
            finally:
                watch.check()
            sent = yield _export(item, name, watch)
    finally:
        # Closing runs the solution's `finally` blocks and frees its objects: under the guard too.
        watch.add_new_modules()
        try:
            if send is not None:
                iterator.close()
            del iterator, send
        finally:
            watch.check()


def _guard(function: Callable, name: str, watch: _Watch) -> Callable:
    def guarded(*args: object, **kwargs: object) -> object:
        watch.add_new_modules()
        arguments_plain = type(_walk((args, kwargs))) is list
        try:
            result = function(*args, **kwargs)
        finally:  # also when it raises: a test may catch the exception and go on
            watch.check()
            if arguments_plain and type(_walk((args, kwargs))) is not list:
                _violation(f"{name} put a non-data object into its arguments")
        return _export(result, name, watch)

    return guarded


def _fresh_main(name: str) -> dict:
    """A new module for the solution, also installed as `__main__` so the harness isn't there."""
    module = type(sys)(name)
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module.__dict__


def _child_tests(code: CodeType, spec: dict) -> None:
    """Run the solution, then the instrumented tests against it, in one namespace (HumanEval).

    The run ends with `end TOKEN` only if the test code ran to its end: an assert correctly not
    reached (an `else:` branch, an empty loop) costs nothing, an exit or a skipped test does."""
    ok_sent = set()

    def ok(token: str) -> None:
        if token not in ok_sent:
            ok_sent.add(token)
            _emit("ok " + token)

    for setter in _HOOK_SETTERS:
        if hasattr(sys, setter):
            setattr(sys, setter, _refuse_hook)
    watch = _Watch()
    pristine = dict(builtins.__dict__)
    known_modules = set(sys.modules)
    namespace = _fresh_main("__solution__")
    exec(code, namespace)
    watch.check()
    # Modules the solution imported are dropped so the tests import fresh, unpatched copies.
    for name in [n for n in sys.modules if n not in known_modules]:
        del sys.modules[name]
    tests = compile(spec["tests"], "<tests>", "exec", dont_inherit=True, optimize=0)
    test_ns = dict(namespace)
    for name, value in namespace.items():
        if type(value) is type(_guard) and value.__globals__ is namespace:
            test_ns[name] = _guard(value, name, watch)
    test_ns["__builtins__"] = pristine
    test_ns[spec["ok_name"]] = ok
    exec(tests, test_ns)
    entry = spec["entry_point"]
    if entry:
        if entry not in namespace:
            raise NameError(f"the solution does not define {entry!r}")
        test_ns["check"](test_ns.get(entry))
    watch.check()
    _emit("end " + spec["end_token"])


def _child_main(code: CodeType) -> None:
    sys.argv = ["solution.py"]
    namespace = _fresh_main("__main__")
    namespace["__file__"] = "solution.py"
    exec(code, namespace)


def _run_child(code: CodeType, spec: dict, events_w: int, stdin_fd: int | None,
               stdout_fd: int | None) -> None:  # fmt: skip
    """Runs in the forked child: never returns."""
    status = 1
    try:
        os.setsid()
        _signal.signal(_SIGXFSZ, _signal.SIG_DFL)
        # Only the child: the supervisor must always be able to write its record.
        fsize = spec["limits"]["fsize"]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        for target, fd in ((0, stdin_fd), (1, stdout_fd), (_EVENTS_FD, events_w)):
            if fd is not None and fd != target:
                os.dup2(fd, target)
        # The parent's descriptors may sit above 1024 (a busy trainer): the sentinel's among them.
        os.closerange(_EVENTS_FD + 1, max(1024, spec["top_fd"] + 1))
        try:
            if spec["mode"] == "tests":
                _child_tests(code, spec)
            else:
                _child_main(code)
            status = 0
        except SystemExit as exc:
            # Exact int only: an int subclass could run code in `&` below.
            status = exc.code if type(exc.code) is int else (0 if exc.code is None else 1)
            if spec["mode"] == "tests":
                status = status or 1
                _emit("error SystemExit the solution exited before the tests finished")
        except BaseException as exc:  # every failure is reported, none escapes
            _report_exception(exc)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # output over the size limit
            pass
    finally:
        _exit(status & 0xFF)


# ---------------------------------------------------------------- the supervisor


def _kill_leftovers(group: int | None, private_pids: bool) -> None:
    """Kill the child's process group and, in our own pid namespace, everything but us."""
    targets = [-group] if group else []
    # kill(-1) reaches every process but this one and pid 1: only in our own pid namespace.
    if private_pids and os.getpid() < 100:
        targets.append(-1)
    for target in targets:
        try:
            os.kill(target, _SIGKILL)
        except OSError:  # nothing left to kill
            pass


def _collect(pid: int, events_r: int, deadline: float) -> tuple[bytes, int, bool, float]:
    """Read child events until it exits or the deadline passes: (events, wait status, timed out, cpu s)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(events_r, select.POLLIN)
    os.set_blocking(events_r, False)
    data, timed_out, exited, reading = bytearray(), False, False, True
    while not exited:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for fd, _ in poller.poll(max(1, int(left * 1000))):
            if fd == pidfd:
                exited = True
            elif reading:
                chunk = _drain(events_r, _EVENT_CAP - len(data))
                data += chunk
                if not chunk:  # end of file, or the cap reached: stop polling it
                    poller.unregister(events_r)
                    reading = False
    if timed_out:
        os.kill(pid, _SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    data += _drain(events_r, _EVENT_CAP - len(data))
    os.close(pidfd)
    return bytes(data), status, timed_out, usage.ru_utime + usage.ru_stime


def _drain(fd: int, room: int) -> bytes:
    out = b""
    while room > len(out):
        try:
            chunk = os.read(fd, min(65536, room - len(out)))
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        out += chunk
    return out


def _parse_events(data: bytes) -> dict:
    oks, ends, error = [], [], None
    for line in data.decode("utf-8", "replace").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "ok" and rest and len(oks) < 10000:
            oks.append(rest)
        elif kind == "end" and len(ends) < 16:
            ends.append(rest)
        elif kind == "error" and error is None:
            name, _, message = rest.partition(" ")
            error = (name, message)
    return {"ok": sorted(set(oks)), "end": ends, "error": error}


def _fork() -> int:
    """fork, waiting out EAGAIN: killed leftovers of an earlier case count until pid 1 reaps them."""
    for _ in range(200):
        try:
            return os.fork()
        except BlockingIOError:
            time.sleep(0.005)
    return os.fork()


def _one_child(code: CodeType, spec: dict, stdin_fd: int | None, stdout_fd: int | None) -> dict:
    events_r, events_w = os.pipe()
    # The parent's wall clock restarts at this line: it holds even if the program stops us.
    os.write(spec["progress_fd"], b"run\n")
    pid = _fork()
    if pid == 0:
        os.close(events_r)
        _run_child(code, spec, events_w, stdin_fd, stdout_fd)
    os.close(events_w)
    deadline = time.monotonic() + spec["limits"]["wall_s"]
    data, status, timed_out, cpu = _collect(pid, events_r, deadline)
    os.close(events_r)
    _kill_leftovers(pid, spec["private_pids"])
    signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    code_ = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    run = {"exit": code_, "signal": signal, "timeout": timed_out, "cpu_s": round(cpu, 3)}
    run.update(_parse_events(data))
    return run


def _normalised_digest(raw: bytes) -> str:
    import _sha256

    text = " ".join(raw.decode("utf-8", "replace").split())
    return _sha256.sha256(text.encode("utf-8")).hexdigest()


def _io_cases(code: CodeType, spec: dict) -> list:
    runs, cap = [], spec["limits"]["output_cap"]
    for stdin_text in spec["inputs"]:
        stdin_fd, stdout_fd = os.memfd_create("stdin"), os.memfd_create("stdout")
        os.write(stdin_fd, stdin_text.encode("utf-8"))
        os.lseek(stdin_fd, 0, 0)
        run = _one_child(code, spec, stdin_fd, stdout_fd)
        size = os.fstat(stdout_fd).st_size
        raw = os.pread(stdout_fd, cap, 0)
        run.update(out_bytes=size, digest=_normalised_digest(raw), head=raw[:2048].decode("utf-8", "replace"))
        os.close(stdin_fd)
        os.close(stdout_fd)
        runs.append(run)
        if run["timeout"]:
            break  # the remaining cases would each wait out the clock too
    return runs


def _compile(source: str) -> tuple[CodeType | None, dict]:
    """The solution's code object, or the record saying why there is none."""
    record: dict = {"syntax_error": None, "runs": []}
    try:
        return compile(source, "<solution>", "exec", dont_inherit=True, optimize=0), record
    except (SyntaxError, ValueError, RecursionError) as exc:
        record["syntax_error"] = f"{type(exc).__name__}: {exc}"
    except MemoryError:
        failed = {"exit": 1, "signal": 0, "timeout": False, "cpu_s": 0.0, "ok": [], "end": []}
        record["runs"] = [dict(failed, error=("MemoryError", "while compiling the solution"))]
    return None, record


def main(argv: list) -> None:
    spec_fd, sentinel_fd, progress_fd, result_fd = fds = [int(a) for a in argv]
    spec = marshal.loads(_read_all(spec_fd))
    os.close(spec_fd)
    spec.update(progress_fd=progress_fd, top_fd=max(fds))
    if spec["nondumpable"]:
        # Without bwrap a /proc is visible: keep same-uid children out of /proc/<this pid>/{fd,mem}.
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    _signal.signal(_SIGXFSZ, _signal.SIG_IGN)
    _write_files(spec["files"])
    _set_limits(spec["limits"])
    # From here on a crash is the solution's doing (even compiling it could overflow the C stack).
    os.write(progress_fd, b"started\n")
    try:
        code, record = _compile(spec["source"])
        if code is not None and spec["mode"] == "io":
            record["runs"] = _io_cases(code, spec)
        elif code is not None:
            record["runs"] = [_one_child(code, spec, None, None)]
    except Exception as exc:  # a supervisor bug is the sandbox's failure, not the solution's
        _kill_leftovers(None, spec["private_pids"])
        record = {"harness_error": f"{type(exc).__name__}: {exc}", "runs": []}
    sentinel = _read_all(sentinel_fd).decode("ascii")
    os.write(result_fd, f"{sentinel} {record!r}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1:])
