"""The supervisor that runs INSIDE the sandbox (system python, standard library only, 3.9+).

It is never imported by posttrain: the parent passes this file's text to `python3 -I -S -c` in
the sandbox (and guard.py's, for the child, in the spec). Every untrusted line runs in a forked
child; this supervisor never executes any, so only it can write the verdict record (see
`posttrain.sandbox` for the whole design).

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
import marshal
import os
import resource
import select
import sys
import time

TYPE_CHECKING = False  # typing itself costs ~10 ms of imports per run
if TYPE_CHECKING:
    from types import CodeType

_EVENT_CAP = 1 << 20  # bytes of child events read at most
_SIGKILL, _SIGXFSZ = 9, 25
_exit = os._exit  # bound before any untrusted code could replace os._exit


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


def _set_signal(number: int, action: int) -> None:
    try:
        _signal.signal(number, action)
    except OSError:  # a test run's seccomp filter refuses every new action: all are SIG_DFL there
        pass


def _load(name: str, source: str) -> object:
    """guard.py or fence.py (their text is in the spec) as a module: loaded before any untrusted line runs."""
    module = type(sys)(f"posttrain_sandbox_{name}")
    exec(compile(source, f"<{name}>", "exec", dont_inherit=True), module.__dict__)
    return module


def _run_child(code: CodeType, spec: dict, events_w: int, stdin_fd: int | None,
               stdout_fd: int | None) -> None:  # fmt: skip
    """Runs in the forked child: never returns."""
    status, guard = 1, spec["guard"]
    try:
        os.setsid()
        _set_signal(_SIGXFSZ, _signal.SIG_DFL)
        # Only the child: the supervisor must always be able to write its record.
        fsize = spec["limits"]["fsize"]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        for target, fd in ((0, stdin_fd), (1, stdout_fd), (guard.EVENTS_FD, events_w)):
            if fd is not None and fd != target:
                os.dup2(fd, target)
        # The parent's descriptors may sit above 1024 (a busy trainer): the sentinel's among them.
        os.closerange(guard.EVENTS_FD + 1, max(1024, spec["top_fd"] + 1))
        traceback_text = None  # held here only: no frame of the solution's can reach this one
        try:
            if spec["mode"] == "tests":
                traceback_text, writes = spec["fence"].fence_introspection()
                guard.child_tests(code, spec, writes)
            else:
                guard.child_main(code)
            status = 0
        except SystemExit as exc:
            # Exact int only: an int subclass could run code in `&` below.
            status = exc.code if type(exc.code) is int else (0 if exc.code is None else 1)
            if spec["mode"] == "tests":
                status = status or 1
                guard.emit("error SystemExit the solution exited before the tests finished")
        except BaseException as exc:  # every failure is reported, none escapes
            guard.report_exception(exc, traceback_text)
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
    spec.update(progress_fd=progress_fd, top_fd=max(fds), guard=_load("guard", spec["guard"]),
                fence=_load("fence", spec["fence"]))
    if spec["nondumpable"]:
        # Without bwrap a /proc is visible: keep same-uid children out of /proc/<this pid>/{fd,mem}.
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    _set_signal(_SIGXFSZ, _signal.SIG_IGN)
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
