"""Run untrusted, model-generated Python under isolation and limits; judge it in the trusted parent.

    from posttrain.sandbox import Limits, run_tests
    result = run_tests(solution, test_code, "add", Limits(wall_s=5))
    result.status, result.reward   # "passed" 1.0 | "wrong"... 0.0 | "sandbox_error" None

Interpreter: candidate code runs in the SYSTEM python (`/usr/bin/python3`, override with
POSTTRAIN_SANDBOX_PYTHON, must live under /usr), started as `python3 -I -S -B -X utf8`: it sees
only the standard library, never the project's venv (torch etc. are outside /usr).

Layers (the ones in force are listed in every `SandboxResult.layers`):
- "uid": as root, `setpriv` drops to uid 2000000000 + worker slot, so RLIMIT_NPROC applies (it is
  ignored for uid 0) and counts only that run.
- "bwrap": bubblewrap with every namespace unshared (user, pid, net, ipc, uts, cgroup, mount),
  nested user namespaces disabled, all capabilities dropped, an empty environment, read-only /usr
  (+ its /bin, /lib symlinks), a size-capped tmpfs /tmp as the only writable place, a read-only
  /dev and NO /proc; `--die-with-parent`, `--new-session`.
- "seccomp": the BPF of `posttrain.sandbox.seccomp` (non-AF_UNIX sockets, ptrace, io_uring,
  namespaces, mounts, bpf, keyrings... denied).
- "rlimits": CPU, address space, file size, open files, core, processes.
- "cgroup": a v1 memory + pids group per run, nested in our own groups: caps the SUM over the
  process tree (RLIMIT_AS is per process) and counts OOM kills.
- "unshare": fallback without bwrap (root only): net, pid, ipc, uts, mount namespaces, but the
  host filesystem stays visible (read and, where the sandbox uid may, write).
Plus always: a wall clock in the supervisor and in the parent, killing whole process trees, and
stdout/stderr written to size-capped files (never read whole into the parent).

Policy: bwrap and, as root, the uid drop are REQUIRED. Missing ones raise SandboxError with the
apt-get command; `require_isolation()` checks this before generation starts. `require=()` (any
call) or POSTTRAIN_SANDBOX=unsafe-no-isolation accepts whatever exists; `require=("bwrap",
"seccomp", "cgroup")` demands more. bubblewrap is NOT in a fresh Debian image: `apt-get install
-y bubblewrap` (util-linux and python3-minimal are).

Verdicts. Inside the sandbox a supervisor (harness.py) runs every untrusted line in a forked
child and alone writes the record; the parent takes the status from that record only, never from
an exit code or from what the program printed:
- the record must carry a random per-run sentinel, read by the supervisor only after every
  untrusted process has exited (and nothing untrusted can reach its memory: no /proc, ptrace
  denied), on a file descriptor no untrusted process holds;
- each assert of the test code is followed (AST rewrite in the parent) by a call reporting a
  random per-assert token; "passed" needs the child's "done" plus EXACTLY the issued tokens.
  Exiting early (`sys.exit(0)`, `os._exit(0)`), killing the supervisor, printing or writing a
  fake record anywhere, or reporting unknown tokens all end as failures;
- the tests run with a copy of the builtins taken before the solution ran, modules the solution
  imported are re-imported fresh for the tests, changes to builtins / pre-loaded modules, trace
  hooks and stray threads fail the run, and every value a solution function returns to the tests
  must be built-in data (int, float, str, list, dict...), so an object whose `__eq__` is always
  True cannot satisfy `assert candidate(x) == y`;
- stdin/stdout cases run one fresh child each; the supervisor hashes the whitespace-normalised
  output and the parent compares with the expected hash: expected outputs never enter the
  sandbox;
- "no verdict" is never a pass; a sandbox that fails to start is "sandbox_error" (reward None).

What is NOT protected (read before trusting a reward):
- `run_tests` is the HumanEval design: solution and tests share one process. The test code is
  in no file, argument or environment variable, and it is compiled only after the solution's
  top level ran, but its source (with its tokens and expected values) is in that process's memory
  from the start: a solution written against this harness can find it (gc, the caller's frame)
  and write the protocol lines itself. Such a targeted forgery needs this module's source and
  the run's exact tokens; exit codes, printed or guessed verdicts do not work. Only stdin/stdout
  cases keep expected answers truly hidden.
- The sandbox shares the host kernel: a kernel exploit escapes it (seccomp only narrows the
  surface). Everything under /usr is readable inside. Spawning a shell is possible but the shell
  is in the same sandbox (same limits, no network, nothing writable outside /tmp).
- Without bwrap ("unshare" or nothing, after an explicit opt-out) the host filesystem is visible,
  and without the uid drop the program runs as the caller: it can read the caller's files and
  `/proc/<pid>/environ` secrets. Only use those modes on code you would run anyway.
"""

from posttrain.sandbox.isolation import detect_layers, require_isolation
from posttrain.sandbox.runner import (
    STATUSES,
    Limits,
    Program,
    SandboxResult,
    normalise_output,
    run_io_cases,
    run_many,
    run_program,
    run_tests,
)

__all__ = [
    "STATUSES",
    "Limits",
    "Program",
    "SandboxResult",
    "detect_layers",
    "normalise_output",
    "require_isolation",
    "run_io_cases",
    "run_many",
    "run_program",
    "run_tests",
]
