"""Host side of the sandbox: which isolation layers exist here, the policy, and one launch.

`detect_layers()` probes once per process (bwrap is actually started, not just looked up);
`plan(require)` applies the policy and raises `SandboxError` naming what is missing and the
command that installs it; `launch(...)` starts one sandboxed supervisor, holds the wall clock
itself (restarted at each `run` line the supervisor reports, so a program that stops its
supervisor still ends on time), kills the whole tree at the end and returns the raw files for
`runner.py` to judge.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from posttrain.errors import SandboxError
from posttrain.sandbox.seccomp import build_filter

SANDBOX_PYTHON = os.environ.get("POSTTRAIN_SANDBOX_PYTHON", "/usr/bin/python3")
"""Interpreter for candidate code: the system python under /usr, which bwrap binds read-only.
The project's venv python is never used inside (it lives outside /usr and carries torch)."""
UNSAFE_ENV = "POSTTRAIN_SANDBOX"
UNSAFE_VALUE = "unsafe-no-isolation"
UID_BASE = 2_000_000_000
"""Worker slot k runs as uid UID_BASE + k (UID_BASE + 32768 + k without bwrap): never a real
account, one per concurrent run, so RLIMIT_NPROC and `kill -1` only ever see that run's processes."""
_PATH = "/usr/local/bin:/usr/bin:/bin"
_INSTALL = {
    "bwrap": "bubblewrap is not installed or cannot create namespaces here: apt-get install -y bubblewrap",
    "uid": "setpriv is needed to drop root to a sandbox uid: apt-get install -y util-linux",
    "seccomp": "no seccomp table for this architecture (only x86_64 and aarch64), or bwrap is missing",
    "cgroup": "cgroup v1 memory and pids controllers are not mounted writable under /sys/fs/cgroup",
    "unshare": "unshare is needed for the fallback: apt-get install -y util-linux",
    "rlimits": "resource limits are always available",
}
_HARNESS = (Path(__file__).parent / "harness.py").read_text(encoding="utf-8")
GUARD_SOURCE = (Path(__file__).parent / "guard.py").read_text(encoding="utf-8")
FENCE_SOURCE = (Path(__file__).parent / "fence.py").read_text(encoding="utf-8")
"""The forked child's code (`posttrain.sandbox.guard`), sent to the supervisor in every spec."""
STARTUP_S = 10.0
"""Seconds the supervisor may take to start (bwrap, python) on a crowded machine: infrastructure."""
KILL_MARGIN_S = 0.5
"""Seconds past a run's wall clock before the parent kills the sandbox: the supervisor's own kill
and record come first unless the program stopped it."""
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _bwrap_args(tmp_bytes: int) -> list[str]:
    """Everything but the seccomp fd: read-only /usr, tmpfs /tmp as the only writable place, no /proc."""
    args = ["bwrap", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
        target = Path("/", name)
        if target.is_symlink():
            args += ["--symlink", os.readlink(target), f"/{name}"]
        elif target.is_dir():
            args += ["--ro-bind", str(target), f"/{name}"]
    args += ["--dev", "/dev", "--remount-ro", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    args += ["--remount-ro", "/", "--unshare-all", "--unshare-user", "--disable-userns"]
    args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv", "--chdir", "/tmp"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # fmt: skip
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def _uid_prefix(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def _own_cgroup(controller: str) -> Path | None:
    """Our own cgroup for `controller` (v1), so per-run groups nest inside whatever limits us."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):
                folder = _CGROUP_ROOT / controller / path.lstrip("/")
                return folder if os.access(folder, os.W_OK) else None
    return None


def _remove_stale_groups(folder: Path | None) -> None:
    """Empty per-run groups left by a posttrain process that was killed mid-run."""
    for stale in folder.glob("posttrain-sandbox-*") if folder is not None else []:
        owner = stale.name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                stale.rmdir()


@functools.cache
def detect_layers() -> dict[str, bool]:
    """Which isolation layers work on this machine (probed once per process)."""
    root = os.geteuid() == 0
    has_setpriv = shutil.which("setpriv", path=_PATH) is not None
    groups = [_own_cgroup(c) for c in ("memory", "pids")]
    for folder in groups:
        _remove_stale_groups(folder)
    layers = {
        "uid": root and has_setpriv,
        "bwrap": False,
        "seccomp": False,
        "rlimits": True,
        "cgroup": all(folder is not None for folder in groups),
        "unshare": root and shutil.which("unshare", path=_PATH) is not None,
    }
    if shutil.which("bwrap", path=_PATH) and os.path.exists(SANDBOX_PYTHON):
        uid = UID_BASE if layers["uid"] else None
        layers["seccomp"] = _probe_bwrap(uid, build_filter())
        layers["bwrap"] = layers["seccomp"] or _probe_bwrap(uid, None)
    return layers


def _probe_bwrap(uid: int | None, seccomp: bytes | None) -> bool:
    """Start `python3 -c pass` the way a run does (minus cgroups); True if that worked."""
    with tempfile.TemporaryFile() as bpf:
        bpf.write(seccomp or b"")
        bpf.seek(0)
        extra = ["--seccomp", str(bpf.fileno())] if seccomp else []
        prefix = _uid_prefix(uid) if uid is not None else []
        command = [*prefix, *_bwrap_args(1 << 20), *extra, SANDBOX_PYTHON, "-I", "-S", "-c", "pass"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(command, env={"PATH": _PATH}, capture_output=True, timeout=30,
                                  pass_fds=(bpf.fileno(),))  # fmt: skip
            return done.returncode == 0
    return False


def default_requirement() -> tuple[str, ...]:
    """bwrap always; the uid drop too when we are root (RLIMIT_NPROC is ignored for uid 0)."""
    if os.environ.get(UNSAFE_ENV, "") == UNSAFE_VALUE:
        return ()
    return ("uid", "bwrap") if os.geteuid() == 0 else ("bwrap",)


@dataclass(frozen=True)
class Plan:
    """How runs are launched here: the layers in force and the programs that provide them."""

    layers: tuple[str, ...]
    python: str = SANDBOX_PYTHON
    seccomp: bytes | None = None
    seccomp_tests: bytes | None = None
    """The filter for runs against test code: `seccomp` that also refuses to install signal handlers."""
    private_pids: bool = False


def plan(require: tuple[str, ...] | list[str] | None = None) -> Plan:
    """The strongest launch available, or SandboxError if a required layer is missing."""
    required = default_requirement() if require is None else tuple(require)
    unknown = sorted(set(required) - set(_INSTALL))
    if unknown:
        raise SandboxError(f"unknown sandbox layer(s) {unknown}; known: {sorted(_INSTALL)}")
    if not os.path.exists(SANDBOX_PYTHON) or not SANDBOX_PYTHON.startswith("/usr/"):
        raise SandboxError(
            f"the sandbox interpreter {SANDBOX_PYTHON} does not exist or is not under /usr (the only "
            "folder the sandbox sees): apt-get install -y python3-minimal, or point "
            "POSTTRAIN_SANDBOX_PYTHON at a python under /usr"
        )
    found = detect_layers()
    missing = [name for name in required if not found[name]]
    if missing:
        how = "\n".join(f"  - {name}: {_INSTALL[name]}" for name in missing)
        raise SandboxError(
            f"sandbox layer(s) {missing} required but not available:\n{how}\n"
            f"To accept weaker isolation, pass require=() or set {UNSAFE_ENV}={UNSAFE_VALUE} "
            "(the layers actually used are reported in every result)."
        )
    order = ["uid", "bwrap", "seccomp", "unshare", "rlimits", "cgroup"]
    active = [name for name in order if found[name]]
    if "bwrap" in active and "unshare" in active:
        active.remove("unshare")  # bwrap already makes every namespace unshare would
    seccomp = "seccomp" in active
    private = "bwrap" in active or "unshare" in active
    return Plan(layers=tuple(active), seccomp=build_filter() if seccomp else None, private_pids=private,
                seccomp_tests=build_filter(deny_signal_handlers=True) if seccomp else None)


def require_isolation(require: Sequence[str] | None = None) -> tuple[str, ...]:
    """The layers runs will have; raises SandboxError now if a required one is missing.

    Call it before generation starts, so a missing bubblewrap stops training at once rather than
    at the first reward (same `require` meaning as in the run functions)."""
    return plan(None if require is None else tuple(require)).layers


class _Slots:
    """Hands out the lowest free worker slot (hence uid) to each concurrent run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[int] = set()

    @contextlib.contextmanager
    def take(self) -> Iterator[int]:
        with self._lock:
            slot = next(k for k in range(1 << 16) if k not in self._used)
            self._used.add(slot)
        try:
            yield slot
        finally:
            with self._lock:
                self._used.discard(slot)


SLOTS = _Slots()
_counter = iter(range(1 << 62))


@dataclass
class _Cgroups:
    """One memory + one pids cgroup (v1) per run, created inside our own groups."""

    folders: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, memory_bytes: int, max_tasks: int) -> _Cgroups:
        name = f"posttrain-sandbox-{os.getpid()}-{next(_counter)}"
        made = cls()
        try:
            for controller, key, value in (
                ("memory", "memory.limit_in_bytes", memory_bytes),
                ("pids", "pids.max", max_tasks),
            ):
                parent = _own_cgroup(controller)
                if parent is None:
                    raise OSError(f"cgroup {controller} is not writable")
                folder = parent / name
                folder.mkdir()
                made.folders.append(folder)
                (folder / key).write_text(str(value))
        except OSError as exc:
            made.destroy()
            raise SandboxError(f"could not create the run's cgroups: {exc}") from exc
        return made

    def wrap(self, command: list[str]) -> list[str]:
        """A shell joins the groups first, so every later process is born inside them."""
        joins = " && ".join(f'echo $$ > "${i + 1}/cgroup.procs"' for i in range(len(self.folders)))
        shift = len(self.folders)
        return ["/bin/sh", "-c", f'{joins} && shift {shift} && exec "$@"', "sh", *map(str, self.folders),
                *command]  # fmt: skip

    def oom_killed(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            for line in (self.folders[0] / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1]) > 0
        return False

    def destroy(self) -> None:
        for folder in self.folders:
            for _ in range(200):
                with contextlib.suppress(OSError, ValueError):
                    for pid in (folder / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)


@dataclass
class RawRun:
    """What came back from one launch, before any judgement."""

    started: bool
    record: bytes
    stdout: bytes
    stdout_size: int
    stderr: bytes
    returncode: int
    host_timeout: bool
    oom_killed: bool
    duration_s: float


def _temp(data: bytes = b"") -> BinaryIO:
    handle = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the caller's ExitStack)
    if data:
        handle.write(data)
        handle.seek(0)
    return handle


def _command(plan_: Plan, uid: int | None, tmp_bytes: int, fds: list[int],
             seccomp_fd: int | None) -> list[str]:  # fmt: skip
    inner = [plan_.python, "-I", "-S", "-B", "-X", "utf8", "-c", _HARNESS, *map(str, fds)]
    if "bwrap" in plan_.layers:
        extra = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
        inner = [*_bwrap_args(tmp_bytes), *extra, *inner]
    prefix = _uid_prefix(uid) if uid is not None else []
    if "unshare" in plan_.layers:
        prefix = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc",
                  "--uts", "--mount", *prefix]  # fmt: skip
    # SIGINT ignored from the start: Python then leaves it alone, and asyncio.run, which sets a
    # handler only over Python's own default one, works under the test runs' seccomp filter.
    return ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", *prefix, *inner]


def launch(plan_: Plan, spec: bytes, sentinel: bytes, stdin: bytes, wall_s: float, runs: int,
           memory_bytes: int, max_tasks: int, tmp_bytes: int, read_cap: int,
           record_cap: int) -> RawRun:  # fmt: skip
    """Start one supervisor under `plan_` for `runs` programs of `wall_s` each; kill all; read the files."""
    with SLOTS.take() as slot, contextlib.ExitStack() as stack:
        files = [stack.enter_context(_temp(data)) for data in (spec, sentinel, b"", stdin, b"", b"")]
        spec_f, sentinel_f, result_f, stdin_f, stdout_f, stderr_f = files
        seccomp_f = stack.enter_context(_temp(plan_.seccomp)) if plan_.seccomp else None
        progress_r, progress_w = (stack.enter_context(os.fdopen(fd, "rb" if i == 0 else "wb", buffering=0))
                                  for i, fd in enumerate(os.pipe()))  # fmt: skip
        fds = [spec_f.fileno(), sentinel_f.fileno(), progress_w.fileno(), result_f.fileno()]
        # Without bwrap's user namespace RLIMIT_NPROC counts every process of the uid machine-wide,
        # including bwrap zombies from earlier runs that pid 1 has not reaped yet: separate range.
        offset = 0 if "bwrap" in plan_.layers else 1 << 15
        uid = UID_BASE + offset + slot if "uid" in plan_.layers else None
        command = _command(plan_, uid, tmp_bytes, fds, seccomp_f.fileno() if seccomp_f else None)
        groups = _Cgroups.create(memory_bytes, max_tasks) if "cgroup" in plan_.layers else None
        if groups is not None:
            stack.callback(groups.destroy)
            command = groups.wrap(command)
        passed = tuple(fds) + ((seccomp_f.fileno(),) if seccomp_f else ())
        start = time.monotonic()
        try:
            proc = subprocess.Popen(command, stdin=stdin_f, stdout=stdout_f, stderr=stderr_f, pass_fds=passed,
                                    env={"PATH": _PATH}, cwd="/", start_new_session=True)  # fmt: skip
        except OSError as exc:
            raise SandboxError(f"could not start the sandbox ({command[0]}): {exc}") from exc
        finally:
            progress_w.close()  # the supervisor holds the only writing end: its exit ends the pipe
        try:
            progress, host_timeout = _watch(proc, progress_r.fileno(), wall_s, runs)
        finally:
            _kill_tree(proc, uid, plan_)
        duration = time.monotonic() - start
        stdout_size = os.fstat(stdout_f.fileno()).st_size
        return RawRun(
            started=progress.startswith(b"started\n"),
            record=os.pread(result_f.fileno(), record_cap, 0),
            stdout=os.pread(stdout_f.fileno(), read_cap, 0),
            stdout_size=stdout_size,
            stderr=os.pread(stderr_f.fileno(), read_cap, 0),
            returncode=proc.returncode,
            host_timeout=host_timeout,
            oom_killed=groups.oom_killed() if groups is not None else False,
            duration_s=duration,
        )


def _watch(proc: subprocess.Popen[bytes], progress_fd: int, wall_s: float, runs: int) -> tuple[bytes, bool]:
    """Wait for `proc` on our own clock: (the progress lines read, whether the clock ran out).

    STARTUP_S until the supervisor says `started`, then `wall_s` + KILL_MARGIN_S from each line it
    writes (`started`, then `run` before each program); lines past the `runs` expected ones don't
    move the deadline, so nothing inside can keep the sandbox alive longer."""
    pidfd = os.pidfd_open(proc.pid)
    lines, data, reading = 0, b"", True
    deadline = time.monotonic() + STARTUP_S
    os.set_blocking(progress_fd, False)
    try:
        poller = select.poll()  # not select(): a busy trainer may hold fds above 1024
        poller.register(pidfd, select.POLLIN)
        poller.register(progress_fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, True
            events = dict(poller.poll(max(1, int(left * 1000))))
            if pidfd in events:
                return data, False
            chunk = _read_some(progress_fd) if reading and progress_fd in events else None
            if chunk is not None:
                reading = bool(chunk)
                if not reading:
                    poller.unregister(progress_fd)
                for _ in range(min(chunk.count(b"\n"), runs + 1 - lines)):
                    lines += 1
                    deadline = time.monotonic() + wall_s + KILL_MARGIN_S
                data = (data + chunk)[:4096]
    finally:
        os.close(pidfd)


def _read_some(fd: int) -> bytes | None:
    """What the pipe holds (b"" at its end), or None after a spurious wake-up."""
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _kill_tree(proc: subprocess.Popen[bytes], uid: int | None, plan_: Plan) -> None:
    """Our process group, then (without a pid namespace) every process of the slot's uid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if uid is not None and not plan_.private_pids:
        # `kill -1` as the slot uid reaches exactly the processes of this run, wherever they hid.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*_uid_prefix(uid), "/bin/sh", "-c", "kill -9 -1"], env={"PATH": _PATH},
                           capture_output=True, timeout=30)  # fmt: skip
