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
Plus always: a wall clock in the supervisor and one in the parent (restarted at each program the
supervisor reports, so a program that stops its supervisor still ends about `wall_s` + 0.5 s
after it started), killing whole process trees, and stdout/stderr written to size-capped files
(never read whole into the parent).

Policy: bwrap and, as root, the uid drop are REQUIRED. Missing ones raise SandboxError with the
apt-get command; `require_isolation()` checks this before generation starts. `require=()` (any
call) or POSTTRAIN_SANDBOX=unsafe-no-isolation accepts whatever exists; `require=("bwrap",
"seccomp", "cgroup")` demands more. bubblewrap is NOT in a fresh Debian image: `apt-get install
-y bubblewrap` (util-linux and python3-minimal are).

Verdicts. Inside the sandbox a supervisor (harness.py) runs every untrusted line in a forked
child (its code around the solution: guard.py) and alone writes the record; the parent takes the
status from that record only, never from an exit code or from what the program printed:
- the record must carry a random per-run sentinel, read by the supervisor only after every
  untrusted process has exited (and nothing untrusted can reach its memory: no /proc, ptrace
  denied), on a file descriptor no untrusted process holds (the child closes every descriptor
  past its pipes, however high the parent's numbers run);
- "passed" needs the test code to run to its end: the supervisor's child reports a random end
  token after the last statement (and `check(entry_point)`) returned, with no error. An assert
  correctly never reached (`else:` of a `try`, a loop over nothing, an untaken `if`) costs
  nothing; exiting early (`sys.exit(0)`, `os._exit(0)`), killing the supervisor, printing or
  writing a fake record anywhere, or reporting unknown tokens all end as failures. Each assert
  also reports a random token, counted in `passed_tests` (asserts that ran and held);
- the supervisor's variables (the end token among them) are out of the solution's reach: from the
  moment the solution starts (fence.py), `sys._getframe()` returns None as on an interpreter
  without frames (namedtuple, typing, enum, logging and inspect cope) and an audit hook refuses the
  genuine one, tracebacks', generators' and coroutines' frames, the collector's object lists
  (`gc.get_objects`, `get_referrers`, `get_referents`), subinterpreters (which have no hook of
  ours) and loading ctypes under any name or file (AttributeError, ValueError, RuntimeError,
  ImportError); the test runs' seccomp filter refuses to install signal handlers (a handler is
  handed the running frame: SIGINT starts ignored, so asyncio.run still works); the guard has no
  class to be found through `object.__subclasses__()`, and its own names are watched; failures
  still print their traceback (file, line, function);
- the test code runs its statements in order: `sys.settrace`, `sys.setprofile` and
  `sys.monitoring` are taken away before the solution runs (a trace callback can move another
  frame's `f_lineno`, i.e. jump over asserts or over the checks below);
- the tests see the solution's callables guarded (functions, and cached functions, partials,
  bound methods, callable objects, classes: a class called by the tests may hand over its own
  instances, the entry point nothing but data), fresh copies of the modules it imported, copies of
  its data and nothing else of it; the genuine builtins, even where the solution defined the
  same names (its `abs` or `sorted` would otherwise run inside the tests' own checks). During each
  call into the solution the tests' own names and builtins must not change (a callback or a class
  of theirs leads the solution to them), and modules it imports leave sys.modules when the call
  returns (the tests never import a module it planted);
- arguments that are data are COPIED in and the solution's changes written back when the call
  returns (in-place sorting works; the solution never holds the tests' own lists, which a late
  `__del__` could fill with lying objects); an exception the solution raises reaches the tests as
  a new one of the nearest built-in class with copied arguments (its own `__str__` or `args`
  would answer a test's check);
- the tests run with a copy of the builtins taken before the solution ran, modules the solution
  imported (its `import math` included) are re-imported fresh for the tests through an import
  system reset to its state before the solution ran, and changes to builtins, to pre-loaded
  modules (their names, their functions' code and defaults, their classes' attributes), to the
  import system, trace hooks, signal handlers and stray threads end the run at once (checked
  after every call into the solution, even one that raised; a test's `except` cannot swallow it);
- what a solution function hands the tests is built-in data, COPIED (int, float, str, bytes,
  range, list, tuple, dict, set, dict views...; exact types, checked by identity; collections'
  Counter, OrderedDict, defaultdict (its factory kept when a built-in type), deque, and namedtuples
  rebuilt as a namedtuple of the same name and fields, never the solution's class), so an object
  whose `__eq__` is always True never reaches `assert candidate(x) == y`, and the solution keeps
  no handle to rewrite a result after the check; arguments it fills with other objects fail the
  run. A generator or built-in iterator (map, filter, zip...) reaches the tests as a generator
  whose every item is produced under the same checks and copied (`list(countdown(3))`, `next`,
  `send` work); a returned function is guarded like the solution's own;
- stdin/stdout cases run one fresh child each; the supervisor hashes the whitespace-normalised
  output and the parent compares with the expected hash: expected outputs never enter the
  sandbox;
- "no verdict" is never a pass; a sandbox that fails to start is "sandbox_error" (reward None).

What is NOT protected (read before trusting a reward):
- "passed" trusts the test code's own control flow: a test that skips its asserts when the
  solution returns nothing (`for got, want in zip(candidate(x), expected)`) passes an empty
  answer. The methods of a solution class's instances that the tests drive are not guarded.
- Correct solutions judged wrong: results that are not built-in data (a LeetCode ListNode or
  TreeNode, Fraction, Decimal, dates, Enum members, dataclass instances), tests that use a
  solution class as a class (`isinstance`, `except ItsError`, an enum member, a staticmethod: the
  tests see a guarded function), tests catching the solution's own exception class, a signal
  handler set in test runs (even SIG_DFL: PermissionError), and tests calling the solution
  thousands of times (each call is checked, ~0.5 ms with few modules loaded: 10,000 calls come
  near the 5 s CPU limit, past it once typing, re and dataclasses are loaded).
- `run_tests` is the HumanEval design: solution and tests share one process, and the fence above
  closes the routes to the supervisor's memory found so far, not every one: `gc.garbage` with
  `gc.DEBUG_SAVEALL` hands out frames of collected cycles (a fresh `gc` module through `_imp`
  escapes any patch of its functions), hand-made code objects (`code.replace`, `marshal`) can
  corrupt memory, a solution that forks can run the tests on its guesses (the copy's events tell
  it which guess holds), tests that hand the solution a callback of theirs (or define a class,
  found through `object.__subclasses__()`) lead it to the guarded wrappers, whose closure cells can
  be rewritten, and the solution's finalizers (`__del__`, weakref callbacks) run its code between
  calls, where only module patches are caught (at the end). A program written against this harness
  can forge a pass that way; one found by reinforcement learning rarely would. Exit codes,
  printed or guessed verdicts, objects with a lying `__eq__` and patched runtimes cannot. Only
  stdin/stdout cases keep expected answers truly hidden; running the tests in a second process
  that never runs solution code is the structural fix. Without the seccomp layer signal handlers
  are not refused; without bwrap the supervisor loads ctypes (to turn off core dumps) and /proc is
  visible.
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
