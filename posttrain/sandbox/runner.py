"""The sandbox API: run a program, HumanEval-style tests or stdin/stdout cases; judge in the parent.

Every verdict is decided here, in the trusted process, from data: the supervisor's record must
carry this run's random sentinel, and a pass needs the token issued after the test code's last
statement (or every stdin/stdout case), with no token this run never issued.
"""

from __future__ import annotations

import ast
import hashlib
import marshal
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any

from posttrain.errors import ConfigError, SandboxError
from posttrain.sandbox.isolation import FENCE_SOURCE, GUARD_SOURCE, Plan, RawRun, launch, plan

STATUSES = ("passed", "wrong", "timeout", "memory", "runtime_error", "syntax_error", "sandbox_error")
_RECORD_CAP = 16 << 20
_SIGKILL, _SIGXCPU, _SIGXFSZ = 9, 24, 25
_SUPERVISOR_TASKS = 2  # bwrap's pid 1 and the supervisor, counted by RLIMIT_NPROC with the program
_CGROUP_EXTRA_MB = 64  # supervisor and bwrap, in the cgroup with the program


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program run (for stdin/stdout problems: for each case)."""

    wall_s: float = 10.0
    """Wall-clock seconds before the program is killed (status "timeout")."""
    cpu_s: float = 5.0
    """CPU seconds per process (RLIMIT_CPU, rounded up to whole seconds)."""
    memory_mb: int = 512
    """Address space per process (RLIMIT_AS) and, with cgroups, the sum over the process tree."""
    max_processes: int = 8
    """Processes and threads the program may have at once, itself included (RLIMIT_NPROC)."""
    max_output_bytes: int = 1 << 20
    """stdout beyond this is cut and the run fails ("output limit exceeded")."""
    max_file_bytes: int = 16 << 20
    """Largest file the program may write (RLIMIT_FSIZE); /tmp, the only writable place, is this size."""

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value, kind = getattr(self, f.name), int if f.type == "int" else (int, float)
            if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
                problems.append(f"Limits.{f.name} must be {'an int' if kind is int else 'a number'} > 0, "
                                f"got {value!r}")  # fmt: skip
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class SandboxResult:
    """The verdict for one program, decided in the parent."""

    status: str
    """One of STATUSES."""
    passed_tests: int = 0
    total_tests: int = 0
    stdout: str = ""
    """The program's stdout (stdin/stdout problems: the first failing case's, first 2 KiB)."""
    stderr: str = ""
    duration_s: float = 0.0
    layers: tuple[str, ...] = ()
    """Isolation layers in force for this run, e.g. ("uid", "bwrap", "seccomp", "rlimits", "cgroup")."""
    reason: str | None = None
    """Why it failed, in words (always set for "sandbox_error")."""
    truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def reward(self) -> float | None:
        """1.0 passed, 0.0 any failure of the program, None when the sandbox itself failed."""
        return None if self.status == "sandbox_error" else float(self.passed)


@dataclass(frozen=True)
class Program:
    """One job for `run_many`: a plain program, or with tests / cases, a judged solution."""

    source: str
    stdin: str = ""
    files: Mapping[str, str] | None = None
    test_code: str | None = None
    entry_point: str | None = None
    cases: Sequence[tuple[str, str]] | None = None


@dataclass
class _Job:
    mode: str
    program: Program
    tokens: frozenset[str] = frozenset()
    end_token: str = ""
    digests: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)


def normalise_output(text: str) -> str:
    """Whitespace-insensitive form used to compare outputs: tokens joined by single spaces."""
    return " ".join(text.split())


def _digest(text: str) -> str:
    return hashlib.sha256(normalise_output(text).encode("utf-8")).hexdigest()


def instrument_tests(test_code: str, ok_name: str) -> tuple[str, list[str]]:
    """Add `ok_name("<token>")` after every assert; returns (new source, tokens in order).

    Raises SyntaxError for test code that does not parse.
    """
    tree = ast.parse(test_code)
    tokens: list[str] = []

    class _AddTokens(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> list[ast.stmt]:
            token = secrets.token_hex(8)
            tokens.append(token)
            call = ast.Call(func=ast.Name(ok_name, ast.Load()), args=[ast.Constant(token)], keywords=[])
            return [node, ast.Expr(call)]

    tree = ast.fix_missing_locations(_AddTokens().visit(tree))
    return ast.unparse(tree), tokens


def _check_files(files: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(files or {})
    for name in out:
        parts = name.split("/")
        if not name or name.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"files: {name!r} must be a relative path without '..' (written under /tmp)")
    return out


def _prepare(program: Program) -> _Job | SandboxResult:
    files = _check_files(program.files)
    if program.cases is not None and program.test_code is not None:
        raise ValueError("Program: give test_code (assert tests) or cases (stdin/stdout), not both")
    base = {"source": program.source, "files": files, "tests": "", "entry_point": None, "ok_name": "",
            "end_token": "", "inputs": []}  # fmt: skip
    if program.cases is not None:
        cases = list(program.cases)
        if not cases:
            return SandboxResult("sandbox_error", reason="no stdin/stdout cases to check")
        base.update(mode="io", inputs=[stdin for stdin, _ in cases])
        return _Job("io", program, digests=[_digest(expected) for _, expected in cases], spec=base)
    if program.test_code is None:
        return _Job("program", program, spec={**base, "mode": "program"})
    ok_name = f"__posttrain_ok_{secrets.token_hex(4)}"
    try:
        tests, tokens = instrument_tests(program.test_code, ok_name)
    except SyntaxError as exc:
        return SandboxResult("sandbox_error", reason=f"the test code does not parse: {exc}")
    if not tokens:
        return SandboxResult("sandbox_error", reason="the test code has no assert statement to check")
    if program.entry_point and not _defines(program.test_code, "check"):
        return SandboxResult("sandbox_error", reason="entry_point given but the test code defines no check()")
    end_token = secrets.token_hex(16)
    base.update(mode="tests", tests=tests, entry_point=program.entry_point, ok_name=ok_name,
                end_token=end_token)  # fmt: skip
    return _Job("tests", program, tokens=frozenset(tokens), end_token=end_token, spec=base)


def _defines(source: str, name: str) -> bool:
    tree = ast.parse(source)
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def _execute(job: _Job, limits: Limits, plan_: Plan) -> SandboxResult:
    runs = max(1, len(job.spec["inputs"])) if job.mode == "io" else 1
    confined = "bwrap" in plan_.layers or "uid" in plan_.layers
    job.spec["limits"] = {
        "cpu_s": math.ceil(limits.cpu_s),
        "memory_bytes": limits.memory_mb << 20,
        "fsize": max(limits.max_file_bytes, limits.max_output_bytes + 1),
        "nproc": limits.max_processes + _SUPERVISOR_TASKS if confined else 0,
        "wall_s": float(limits.wall_s),
        "output_cap": limits.max_output_bytes,
    }
    job.spec["private_pids"] = plan_.private_pids
    job.spec["guard"] = GUARD_SOURCE
    job.spec["fence"] = FENCE_SOURCE
    job.spec["nondumpable"] = "bwrap" not in plan_.layers
    sentinel = secrets.token_hex(16).encode("ascii")
    files_size = sum(len(v.encode("utf-8")) for v in job.spec["files"].values())
    if job.mode == "tests":  # a signal handler would be handed a frame: see guard.fence_introspection
        plan_ = replace(plan_, seccomp=plan_.seccomp_tests)
    try:
        raw = launch(
            plan_,
            spec=marshal.dumps(job.spec, 4),
            sentinel=sentinel,
            stdin=job.program.stdin.encode("utf-8"),
            wall_s=limits.wall_s,
            runs=runs,
            memory_bytes=(limits.memory_mb + _CGROUP_EXTRA_MB) << 20,
            max_tasks=limits.max_processes + _SUPERVISOR_TASKS + 2,
            tmp_bytes=limits.max_file_bytes + files_size + (1 << 20),
            read_cap=limits.max_output_bytes,
            record_cap=_RECORD_CAP,
        )
    except SandboxError as exc:
        return SandboxResult("sandbox_error", layers=plan_.layers, reason=str(exc))
    return _judge(raw, job, limits, plan_.layers, sentinel)


def _parse_record(data: bytes, sentinel: bytes) -> dict[str, Any] | None:
    """The supervisor's record, if a line carries this run's sentinel and parses as plain data."""
    for line in data.split(b"\n"):
        if line.startswith(sentinel + b" "):
            try:
                value = ast.literal_eval(line[len(sentinel) + 1 :].decode("utf-8"))
            except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
                return None
            return value if isinstance(value, dict) and isinstance(value.get("runs"), list) else None
    return None


def _run_failure(run: dict[str, Any], limits: Limits, oom: bool) -> tuple[str, str] | None:
    """(status, reason) when one child ended badly for a reason other than its answer."""
    signal, error = run.get("signal", 0), run.get("error")
    error_type = error[0] if isinstance(error, tuple | list) and error else None
    if run.get("timeout"):
        return "timeout", f"killed after the {limits.wall_s:g} s wall-clock limit"
    if signal == _SIGXCPU or (signal == _SIGKILL and run.get("cpu_s", 0) >= math.ceil(limits.cpu_s)):
        return "timeout", f"killed after the {math.ceil(limits.cpu_s)} s CPU limit"
    if error_type == "MemoryError" or (signal == _SIGKILL and oom):
        return "memory", f"exceeded the {limits.memory_mb} MiB memory limit"
    if signal == _SIGXFSZ:
        return "runtime_error", "output or file size limit exceeded"
    if signal:
        return "runtime_error", f"killed by signal {signal}"
    return None


def _error_text(run: dict[str, Any]) -> str:
    error = run.get("error")
    return f"{error[0]}: {error[1]}" if isinstance(error, tuple | list) and len(error) == 2 else ""


def _judge_tests(run: dict[str, Any], job: _Job) -> tuple[str, int, str | None]:
    """Passed: the test code ran to its end (asserts it legitimately skipped cost nothing), no error.

    `passed` counts the assert statements that ran and held."""
    oks = {t for t in run.get("ok", []) if isinstance(t, str)}
    ends = set(run.get("end", [])) if isinstance(run.get("end"), list) else set()
    passed = len(oks & job.tokens)
    if oks - job.tokens or ends - {job.end_token}:
        return "wrong", passed, "the record holds test tokens this run never issued (forged verdict)"
    error = _error_text(run)
    if job.end_token in ends and not error and run.get("exit") == 0:
        return "passed", passed, None
    if error.startswith(("AssertionError", "SandboxViolation")):
        return "wrong", passed, error
    if error:
        return "runtime_error", passed, error
    return "runtime_error", passed, f"the program exited (code {run.get('exit')}) before the tests finished"


def _judge_io(runs: list[dict[str, Any]], job: _Job, limits: Limits, oom: bool) -> SandboxResult:
    first: tuple[str, str, str] | None = None
    passed = 0
    for index, expected in enumerate(job.digests):
        run = runs[index] if index < len(runs) else None
        if run is None:
            status, reason = "timeout", "not run: an earlier case timed out"
        else:
            failure = _run_failure(run, limits, oom)
            if failure is None and (run.get("exit") != 0 or run.get("error")):
                failure = ("runtime_error", _error_text(run) or f"exit code {run.get('exit')}")
            if failure is None and run.get("out_bytes", 0) > limits.max_output_bytes:
                failure = ("runtime_error", f"output exceeded {limits.max_output_bytes} bytes")
            if failure is None and run.get("digest") != expected:
                failure = ("wrong", "output differs from the expected output")
            status, reason = failure or ("passed", "")
        passed += status == "passed"
        if status != "passed" and first is None:
            head = str(run.get("head", "")) if run else ""
            first = (status, f"case {index}: {reason}", head)
    if first is None:
        return SandboxResult("passed", passed, len(job.digests))
    return SandboxResult(first[0], passed, len(job.digests), stdout=first[2], reason=first[1])


def _judge(raw: RawRun, job: _Job, limits: Limits, layers: tuple[str, ...], sentinel: bytes) -> SandboxResult:
    """The verdict, from the record (never from the exit code or anything the program printed)."""
    record = _parse_record(raw.record, sentinel)
    total = len(job.tokens) if job.mode == "tests" else len(job.digests)
    if record is None:
        if not raw.started:
            tail = raw.stderr.decode("utf-8", "replace")[-500:].strip()
            why = f"did not start within {raw.duration_s:.1f} s" if raw.host_timeout else "did not start"
            status, reason = "sandbox_error", f"the sandbox {why} (exit {raw.returncode}): {tail}"
        elif raw.host_timeout:
            status = "timeout"
            reason = f"killed after the {limits.wall_s:g} s wall-clock limit (the parent's clock)"
        elif raw.oom_killed:
            status, reason = "memory", f"exceeded the {limits.memory_mb} MiB memory limit (cgroup)"
        else:
            status, reason = "runtime_error", "no verdict: the supervisor was killed from inside the sandbox"
        verdict = SandboxResult(status, 0, total, reason=reason)
    elif record.get("harness_error"):
        reason = f"the sandbox's supervisor failed: {record['harness_error']}"
        verdict = SandboxResult("sandbox_error", 0, total, reason=reason)
    elif record.get("syntax_error"):
        verdict = SandboxResult("syntax_error", 0, total, reason=str(record["syntax_error"]))
    elif job.mode == "io":
        verdict = _judge_io(record["runs"], job, limits, raw.oom_killed)
    else:
        run = record["runs"][0] if len(record["runs"]) == 1 else {}
        failure = _run_failure(run, limits, raw.oom_killed)
        if job.mode == "tests":
            status, passed, reason = _judge_tests(run, job)
        else:
            ok = run.get("exit") == 0 and not run.get("error")
            status, passed = ("passed" if ok else "runtime_error"), 0
            reason = None if ok else (_error_text(run) or f"exit code {run.get('exit')}")
        if failure is not None:
            status, reason = failure
        if status == "passed" and raw.stdout_size > limits.max_output_bytes:
            status, reason = "runtime_error", f"output exceeded {limits.max_output_bytes} bytes"
        verdict = SandboxResult(status, passed, total, reason=reason)
    status, reason = verdict.status, verdict.reason
    if raw.oom_killed and status not in ("syntax_error", "sandbox_error", "memory"):
        # A process of the tree was OOM-killed: the run broke its memory budget even if it went on.
        status, reason = "memory", f"exceeded the {limits.memory_mb} MiB memory limit (cgroup OOM kill)"
    stdout = verdict.stdout or raw.stdout.decode("utf-8", "replace")
    return SandboxResult(
        status, verdict.passed_tests, verdict.total_tests, stdout=stdout,
        stderr=raw.stderr.decode("utf-8", "replace"), duration_s=raw.duration_s, layers=layers,
        reason=reason, truncated=raw.stdout_size > limits.max_output_bytes,
    )  # fmt: skip


def _one(program: Program, limits: Limits, require: Sequence[str] | None) -> SandboxResult:
    plan_ = plan(None if require is None else tuple(require))
    job = _prepare(program)
    return job if isinstance(job, SandboxResult) else _execute(job, limits, plan_)


def run_program(source: str, *, stdin: str = "", limits: Limits = Limits(),
                files: dict[str, str] | None = None,
                require: Sequence[str] | None = None) -> SandboxResult:  # fmt: skip
    """Run `source` as a script with `stdin`; "passed" means it exited 0 within the limits.

    `require`: isolation layers that must be in force (default: bwrap, plus the uid drop as root;
    `()` accepts whatever exists). Raises SandboxError when a required layer is missing.
    """
    return _one(Program(source, stdin=stdin, files=files), limits, require)


def run_tests(solution: str, test_code: str, entry_point: str | None, limits: Limits = Limits(), *,
              require: Sequence[str] | None = None) -> SandboxResult:  # fmt: skip
    """HumanEval shape: run `solution`, then `test_code`; with `entry_point`, `check(entry_point)`.

    Without `entry_point` the test code's top-level asserts call the solution's names directly
    (MBPP shape). "passed" means the test code ran to its end without an error: an assert it
    correctly never reaches (an `else:` branch, a loop over nothing) costs nothing.
    `passed_tests`/`total_tests`: assert statements that ran and held / assert statements.
    """
    return _one(Program(solution, test_code=test_code, entry_point=entry_point), limits, require)


def run_io_cases(solution: str, cases: Sequence[tuple[str, str]], limits: Limits = Limits(), *,
                 require: Sequence[str] | None = None) -> SandboxResult:  # fmt: skip
    """stdin/stdout problem: each (stdin, expected stdout) case runs in a fresh process; outputs are
    compared whitespace-normalised (see `normalise_output`), the expected ones never enter the sandbox."""
    return _one(Program(solution, cases=cases), limits, require)


def run_many(programs: Sequence[str | Program], limits: Limits = Limits(), max_workers: int | None = None, *,
             require: Sequence[str] | None = None) -> list[SandboxResult]:  # fmt: skip
    """Run many programs (plain sources or `Program` jobs) on a pool bounded by the cores; results in order.

    The isolation policy is checked once before anything runs.
    """
    plan_ = plan(None if require is None else tuple(require))
    jobs = [_prepare(p if isinstance(p, Program) else Program(p)) for p in programs]
    workers = max(1, min(max_workers or len(os.sched_getaffinity(0)), len(jobs) or 1))

    def work(job: _Job | SandboxResult) -> SandboxResult:
        return job if isinstance(job, SandboxResult) else _execute(job, limits, plan_)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(work, jobs))
