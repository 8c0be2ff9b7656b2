"""Adversarial suite for posttrain.sandbox: every attack ends as a clean failure, the host unharmed.

These tests FAIL when bubblewrap is missing (a green run must prove the real isolation); set
POSTTRAIN_ALLOW_NO_BWRAP_TESTS=1 on a laptop without it to skip the ones that execute code.
"""

from __future__ import annotations

import os
import random
import resource
import socket
import textwrap
from pathlib import Path

import pytest

from posttrain.errors import ConfigError, SandboxError
from posttrain.sandbox import (
    Limits,
    Program,
    SandboxResult,
    detect_layers,
    guard,
    isolation,
    normalise_output,
    require_isolation,
    run_io_cases,
    run_many,
    run_program,
    run_tests,
    runner,
)
from posttrain.sandbox.seccomp import build_filter

TIGHT = Limits(wall_s=1.5, cpu_s=1, memory_mb=256, max_processes=4, max_output_bytes=1 << 16,
               max_file_bytes=1 << 20)  # fmt: skip
ADD_TESTS = "def check(candidate):\n    assert candidate(2, 2) == 4\n    assert candidate(1, 2) == 3\n" \
            "    for i in range(3):\n        assert candidate(i, 0) == i\n"  # fmt: skip
ADD_OK = "def add(a, b):\n    return a + b\n"


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> None:
    if not detect_layers()["bwrap"]:
        if os.environ.get("POSTTRAIN_ALLOW_NO_BWRAP_TESTS") == "1":
            pytest.skip("bubblewrap missing and POSTTRAIN_ALLOW_NO_BWRAP_TESTS=1")
        pytest.fail("bubblewrap is missing or broken: apt-get install -y bubblewrap "
                    "(or set POSTTRAIN_ALLOW_NO_BWRAP_TESTS=1 on a developer laptop)")  # fmt: skip


def _sandbox_processes() -> list[str]:
    """Live (non-zombie) processes running as any sandbox uid."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        if isolation.UID_BASE <= uid < isolation.UID_BASE + 65536 and "Z" not in fields.get("State", ""):
            found.append(f"{entry.name} {fields.get('Name', '').strip()}")
    return found


def _leftover_cgroups() -> list[Path]:
    folders = [isolation._own_cgroup(c) for c in ("memory", "pids")]
    return [p for f in folders if f is not None for p in f.glob(f"posttrain-sandbox-{os.getpid()}-*")]


# ---------------------------------------------------------------- correct, wrong, syntax


def test_layers_in_force() -> None:
    result = run_program("print(1)")
    expected = {"bwrap", "seccomp", "rlimits"} | ({"uid"} if os.geteuid() == 0 else set())
    assert expected <= set(result.layers) and set(result.layers) == set(require_isolation())
    assert result.status == "passed" and result.stdout == "1\n" and result.reward == 1.0


def test_program_reads_stdin_and_files() -> None:
    source = "a, b = map(int, input().split())\nprint(a + b, open('data/x.txt').read())"
    result = run_program(source, stdin="2 3\n", files={"data/x.txt": "hello"})
    assert (result.status, result.stdout) == ("passed", "5 hello\n")


def test_nonzero_exit_is_runtime_error() -> None:
    result = run_program("import sys\nprint('PASSED')\nsys.exit(3)")
    assert (result.status, result.reason, result.reward) == ("runtime_error", "exit code 3", 0.0)


def test_humaneval_tests_pass_and_count_asserts() -> None:
    result = run_tests(ADD_OK, ADD_TESTS, "add")
    assert (result.status, result.passed_tests, result.total_tests) == ("passed", 3, 3)


def test_wrong_answer_is_wrong_with_partial_count() -> None:
    result = run_tests("def add(a, b):\n    return a * b\n", ADD_TESTS, "add")
    # 2*2 == 4 passes, 1*2 == 3 fails and stops check(): 1 of 3 assert statements passed.
    assert (result.status, result.passed_tests, result.total_tests) == ("wrong", 1, 3)
    assert result.reason.startswith("AssertionError") and result.reward == 0.0


def test_mbpp_shape_top_level_asserts() -> None:
    tests = "assert add(1, 1) == 2\nassert add(-1, 1) == 0\n"
    assert run_tests(ADD_OK, tests, None).status == "passed"
    assert run_tests("def add(a, b):\n    return 0\n", tests, None).status == "wrong"


def test_syntax_error() -> None:
    for result in (run_program("def f(:\n"), run_tests("def add(a, b) return a", ADD_TESTS, "add")):
        assert result.status == "syntax_error" and "SyntaxError" in result.reason


def test_missing_entry_point_is_runtime_error() -> None:
    result = run_tests("def plus(a, b):\n    return a + b\n", ADD_TESTS, "add")
    assert result.status == "runtime_error" and "does not define 'add'" in result.reason


def test_io_cases_whitespace_normalised_and_counted() -> None:
    solution = "n = int(input())\nprint(n * 2, end='\\n\\n')"
    result = run_io_cases(solution, [("1", "2"), ("5", " 10 "), ("7", "15")])
    assert (result.status, result.passed_tests, result.total_tests) == ("wrong", 2, 3)
    assert result.reason.startswith("case 2") and result.stdout == "14\n\n"
    assert run_io_cases(solution, [("3", "6\n")]).status == "passed"
    assert normalise_output(" 1  2\n3\n\n") == "1 2 3"


def test_io_cases_each_case_gets_a_fresh_process() -> None:
    solution = "import builtins\nprint(getattr(builtins, 'seen', 0))\nbuiltins.seen = 1"
    assert run_io_cases(solution, [("", "0"), ("", "0")]).status == "passed"


def test_run_many_keeps_order_and_mixes_jobs() -> None:
    jobs = ["print('a')", Program(ADD_OK, test_code=ADD_TESTS, entry_point="add"), "raise ValueError('x')",
            Program("print(input())", cases=[("q", "q")])]  # fmt: skip
    results = run_many(jobs, TIGHT, max_workers=2)
    assert [r.status for r in results] == ["passed", "passed", "runtime_error", "passed"]
    assert results[0].stdout == "a\n" and results[2].reason == "ValueError: x"


# ---------------------------------------------------------------- correct programs the rules must not fail

ROOT = "def root(x):\n    if x < 0:\n        raise ValueError(x)\n    return int(x ** 0.5)\n"
UNREACHED_ASSERTS = {
    "else of a try": """
        def check(candidate):
            assert candidate(16) == 4
            try:
                candidate(-1)
            except ValueError:
                pass
            else:
                assert False, "no ValueError"
    """,
    "loop over nothing": """
        def check(candidate):
            assert candidate(9) == 3
            for x in []:
                assert candidate(x) == x
    """,
    "if not taken": """
        def check(candidate):
            if candidate(0) != 0:
                assert False
            assert candidate(4) == 2
    """,
    "helper per case": """
        def same(got, want):
            assert got == want, (got, want)
        def unused(x):
            assert x
        def check(candidate):
            for x, want in [(1, 1), (4, 2), (9, 3)]:
                same(candidate(x), want)
    """,
}


@pytest.mark.parametrize("name", UNREACHED_ASSERTS)
def test_asserts_correctly_not_reached_do_not_fail(name: str) -> None:
    tests = _src(UNREACHED_ASSERTS[name])
    result = run_tests(ROOT, tests, "root")
    assert result.status == "passed", result.reason
    assert 0 < result.passed_tests < result.total_tests  # the ones that ran and held, of all
    wrong = run_tests("def root(x):\n    return x // 4\n", tests, "root")
    assert wrong.status == "wrong" and wrong.reason.startswith("AssertionError")


def test_mbpp_shape_with_an_assert_not_reached() -> None:
    tests = "assert root(4) == 2\nif root(0):\n    assert False, 'root(0) is 0'\n"
    assert run_tests(ROOT, tests, None).status == "passed"
    assert run_tests("def root(x):\n    return 2\n", tests, None).status == "wrong"


def test_generators_reach_the_tests() -> None:
    countdown = "def countdown(n):\n    while n > 0:\n        yield n\n        n -= 1\n"
    tests = _src("""
        def check(candidate):
            import types
            assert list(candidate(3)) == [3, 2, 1] and list(candidate(0)) == []
            gen = candidate(2)
            assert isinstance(gen, types.GeneratorType) and next(gen) == 2 and next(gen) == 1
            assert sum(candidate(4)) == 10 and [x for x in candidate(1)] == [1]
    """)
    assert run_tests(countdown, tests, "countdown").status == "passed"
    assert run_tests(countdown.replace("n -= 1", "n -= 2"), tests, "countdown").status == "wrong"


def test_iterators_ranges_views_and_functions_reach_the_tests() -> None:
    solution = _src("""
        def evens(n):
            return filter(lambda x: x % 2 == 0, range(n))
        def squares(n):
            return map(lambda x: x * x, range(n))
        def span(n):
            return range(n)
        def letters(word):
            return {c: word.count(c) for c in word}.keys()
        def adder(k):
            return lambda x: x + k
        def naturals():
            n = 0
            while True:
                yield n
                n += 1
        def echo():
            got = yield "ready"
            while True:
                got = yield got * 2
    """)
    tests = _src("""
        import itertools
        assert list(evens(7)) == [0, 2, 4, 6] and list(squares(3)) == [0, 1, 4]
        assert span(3) == range(3) and list(span(2)) == [0, 1]
        assert sorted(letters("abca")) == ["a", "b", "c"] and letters("ab") == {"a", "b"}
        assert adder(2)(3) == 5
        assert list(itertools.islice(naturals(), 4)) == [0, 1, 2, 3]
        gen = echo()
        assert next(gen) == "ready" and gen.send(4) == 8 and gen.send("a") == "aa"
    """)
    result = run_tests(solution, tests, None)
    assert result.status == "passed", result.reason


def test_results_are_copied_with_their_shape() -> None:
    solution = _src("""
        def shapes():
            row, loop = [1, 2], [0]
            loop.append(loop)
            return {"grid": [row, row], "loop": loop, "pair": ([3], (4, [5])), "set": {1, (2, 3)},
                    "keys": {1: 2}.keys(), "items": {1: [2]}.items(), "values": {1: (2,)}.values(),
                    "bytes": bytearray(b"ab"), "range": range(3), "pairs": [(i, str(i)) for i in range(3)]}
    """)
    tests = _src("""
        def check(candidate):
            got = candidate()
            assert got["grid"] == [[1, 2], [1, 2]] and got["grid"][0] is got["grid"][1]
            assert got["loop"][0] == 0 and got["loop"][1] is got["loop"]
            assert got["pair"] == ([3], (4, [5])) and got["set"] == {1, (2, 3)}
            assert got["keys"] == {1} and list(got["items"]) == [(1, [2])] and list(got["values"]) == [(2,)]
            assert got["bytes"] == b"ab" and got["range"] == range(3) and got["pairs"][2] == (2, "2")
    """)
    result = run_tests(solution, tests, "shapes")
    assert result.status == "passed", result.reason


# ---------------------------------------------------------------- resource attacks


def test_infinite_loop_times_out() -> None:
    # A generous wall clock, so the CPU limit fires first even on a crowded machine.
    result = run_program("while True:\n    pass", limits=Limits(wall_s=20, cpu_s=1))
    assert result.status == "timeout" and "1 s CPU limit" in result.reason and result.duration_s < 19


def test_sleep_past_the_wall_clock() -> None:
    result = run_program("import time\ntime.sleep(60)", limits=TIGHT)
    assert result.status == "timeout" and "1.5 s wall-clock" in result.reason and result.duration_s < 10


def test_fork_bomb_is_contained_and_cleaned_up() -> None:
    bomb = _src("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    result = run_program(bomb, limits=TIGHT)
    assert result.status == "timeout" and result.reward == 0.0
    assert _sandbox_processes() == [] and _leftover_cgroups() == []
    assert run_program("print('fine')", limits=TIGHT).stdout == "fine\n"  # the machine still works


def test_thread_and_process_count_is_limited() -> None:
    source = _src("""
        import os, time
        n = 0
        try:
            for _ in range(50):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                n += 1
        except OSError:
            pass
        print(n)
    """)
    result = run_program(source, limits=TIGHT)
    assert result.stdout == "3\n"  # max_processes=4 includes the program itself


def test_memory_hog() -> None:
    result = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))", limits=TIGHT)
    assert result.status == "memory" and "256 MiB" in result.reason


def test_memory_summed_over_processes_by_cgroup() -> None:
    if "cgroup" not in run_program("pass").layers:
        pytest.skip("no writable cgroup v1 memory+pids here: only per-process RLIMIT_AS applies")
    # Three children of 200 MiB each: every one is under RLIMIT_AS, their sum is not.
    source = _src("""
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                x = bytearray(200 << 20)
                x[::4096] = b"1" * len(x[::4096])
                time.sleep(1)
                os._exit(0)
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
    """)
    result = run_program(source, limits=Limits(wall_s=5, memory_mb=256, max_processes=5))
    assert result.status == "memory" and "cgroup" in result.reason


def test_printing_gigabytes_is_bounded() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=TIGHT)
    assert result.status == "runtime_error" and result.truncated
    assert len(result.stdout) == TIGHT.max_output_bytes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


# ---------------------------------------------------------------- escape attempts


def test_writing_outside_the_sandbox(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    source = _src(f"""
        for p in ({str(target)!r}, "/usr/pwned", "/pwned", "/dev/pwned"):
            try:
                open(p, "w").write("x")
                print("wrote", p)
            except OSError as e:
                print(type(e).__name__)
    """)
    result = run_program(source)
    assert "wrote" not in result.stdout and not target.exists() and not Path("/usr/pwned").exists()


def test_deleting_files_outside(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    source = _src(f"""
        import os, shutil
        for attack in (lambda: os.remove({str(canary)!r}), lambda: shutil.rmtree({str(tmp_path)!r}),
                       lambda: os.remove("/usr/bin/python3")):
            try:
                attack()
            except OSError:
                pass
    """)
    run_program(source)
    assert canary.read_text() == "alive" and Path("/usr/bin/python3").exists()


def test_secrets_in_environment_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", "s3cr3t-env")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("s3cr3t-file")
    source = _src(f"""
        import os
        print(dict(os.environ))
        for p in ("/proc/self/environ", "/proc/1/environ", "/proc/%d/environ" % os.getppid(),
                  {str(secret_file)!r}, "/etc/shadow"):
            try:
                print(open(p).read())
            except OSError as e:
                print(p, type(e).__name__)
    """)
    result = run_program(source)
    assert result.status == "passed" and "FileNotFoundError" in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr


def test_network_to_a_loopback_server() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
    result = run_program(source, limits=TIGHT)
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.accept()  # nothing ever connected
    server.close()
    assert result.status == "runtime_error" and result.reason.startswith("PermissionError")
    assert "connected" not in result.stdout


@pytest.mark.parametrize("how", [
    "import posix\nposix.system({cmd!r})",
    "import os\npid = os.posix_spawn('/bin/sh', ['sh', '-c', {cmd!r}], {{}})\nos.waitpid(pid, 0)",
    "import subprocess\nprint(subprocess.run(['sh', '-c', {cmd!r}], capture_output=True, text=True).stdout)",
])  # fmt: skip
def test_spawning_a_shell_stays_inside(how: str, tmp_path: Path) -> None:
    target = tmp_path / "shell.txt"
    result = run_program(how.format(cmd=f"echo x > {target}; ls /; id -u"), limits=TIGHT)
    assert result.status == "passed" and not target.exists()
    listing = result.stdout.split()
    assert "usr" in listing and "tmp" in listing and "etc" not in listing and "root" not in listing
    assert (str(isolation.UID_BASE) in listing) == (os.geteuid() == 0)


def test_killing_its_parent() -> None:
    for source in ("import os\nos.kill(os.getppid(), 9)", "import os\nos.kill(1, 9)\nos.kill(-1, 9)"):
        result = run_program(source, limits=TIGHT)
        assert result.status == "runtime_error"
    attack = "import os\nos.kill(os.getppid(), 9)\n" + ADD_OK
    assert run_tests(attack, ADD_TESTS, "add").status == "runtime_error"


STOPS = {"its parent": "os.kill(os.getppid(), signal.SIGSTOP)",
         "every process": "os.kill(-1, signal.SIGSTOP)"}  # fmt: skip


@pytest.mark.parametrize("how", STOPS)
def test_stopping_the_supervisor_cannot_stretch_the_wall_clock(how: str) -> None:
    stop = f"import os, signal\n{STOPS[how]}\n"
    limits = Limits(wall_s=2)
    results = [run_tests(stop + ADD_OK, ADD_TESTS, "add", limits), run_program(stop, limits=limits),
               run_io_cases(stop, [("", "1")] * 3, limits)]  # fmt: skip
    for result in results:
        # The parent kills 0.5 s after the clock; the rest is start-up on a crowded machine.
        assert result.status == "timeout" and "2 s wall-clock" in result.reason
        assert result.duration_s < limits.wall_s + 1.5, result.duration_s


def test_descriptors_of_the_parent_above_1024_stay_out() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1300: the parent cannot hold fds above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the sandbox's files land above
    try:
        probe = "import os\nfound = []\nfor fd in range(4096):\n    try:\n        os.fstat(fd)\n" \
                "        found.append(fd)\n    except OSError:\n        pass\nprint(found)\n"  # fmt: skip
        assert run_program(probe).stdout == "[0, 1, 2, 3]\n"  # stdio and the events pipe only
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------- verdict forgery


EARLY_EXITS = ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n",
               "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"]  # fmt: skip


@pytest.mark.parametrize("prefix", EARLY_EXITS)
def test_exiting_before_the_tests_fails(prefix: str) -> None:
    result = run_tests(prefix + ADD_OK, ADD_TESTS, "add")
    assert result.status == "runtime_error" and result.reward == 0.0 and result.passed_tests == 0


@pytest.mark.parametrize("patch", [
    "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n",
    "import builtins\nbuiltins.abs = lambda x: 0\n",
    "import os\nos.getcwd = lambda: '/'\n",
    "import sys\nsys.settrace(lambda *a: None)\n",
    "import threading, time\nthreading.Thread(target=time.sleep, args=(3,)).start()\n",
    "import sys\nsys.addaudithook(lambda *a: None)\n",
    "import os\nos.path.join.__code__ = (lambda *a: '').__code__\n",
    "import os\nos._Environ.__repr__ = lambda self: ''\n",
])  # fmt: skip
def test_monkeypatching_the_runtime_fails(patch: str) -> None:
    result = run_tests(patch + "def add(a, b):\n    return 0\n", ADD_TESTS, "add")
    assert result.status == "wrong" and result.reason.startswith("SandboxViolation")


def test_a_functions_code_or_defaults_changed_during_a_call_fails() -> None:
    """The watch re-reads functions' code and defaults only after such a write (an audited event):
    one made inside a call, after the first check, is still caught."""
    for patch in ("os.path.join.__defaults__ = ()", "os.path.join.__code__ = (lambda *a: '').__code__"):
        source = f"import os\ndef add(a, b):\n    if a == 1:\n        {patch}\n    return a + b\n"
        result = run_tests(source, ADD_TESTS, "add")
        assert result.status == "wrong" and "modified module 'posixpath'" in result.reason, patch


def test_unprintable_exception_and_odd_exit_codes_fail() -> None:
    bad_str = _src("""
        class Boom(Exception):
            def __str__(self):
                raise RuntimeError("no")
        raise Boom()
    """)
    result = run_program(bad_str)
    assert (result.status, result.reason) == ("runtime_error", "Boom: (unprintable)")
    odd_exit = _src("""
        import os
        class Code(int):
            def __and__(self, other):
                return 0
        os._exit = lambda code: None
        raise SystemExit(Code(7))
    """)
    assert run_program(odd_exit).status == "runtime_error"


def test_harness_is_not_the_main_module() -> None:
    spy = "import __main__\nprint(sorted(n for n in vars(__main__) if not n.startswith('__')))\nx = 1"
    assert run_program(spy).stdout == "[]\n"


def test_always_equal_object_fails() -> None:
    source = _src("""
        class Same(int):
            def __eq__(self, other):
                return True
        def add(a, b):
            return [Same(0)]
    """)
    tests = "def check(candidate):\n    assert candidate(1, 2) == [3]\n"
    result = run_tests(source, tests, "add")
    assert result.status == "wrong" and "returned a Same object" in result.reason


SAME = "class Same:\n    def __eq__(self, other):\n        return True\n"
# Each of the first four, the two module ones and the guard's constants passed on an older harness.
FORGERIES = {
    "a metaclass lying to the type check": (_src("""
        class Meta(type):
            def __hash__(cls):
                return hash(int)
            def __eq__(cls, other):
                return True
        class Same(metaclass=Meta):
            def __eq__(self, other):
                return True
        def add(a, b):
            return Same()
    """), ADD_TESTS, "add", "returned a Same object"),
    "a trace hook jumping over the guard": (_src("""
        import sys
        class Same:
            def __eq__(self, other):
                return True
        def add(a, b):
            caller = sys._getframe(1)
            end = max(line for _, _, line in caller.f_code.co_lines() if line)
            def jump(frame, event, arg):
                if frame is caller and event == "line":
                    frame.f_lineno = end
                    frame.f_trace = None
                    sys.settrace(None)
                return jump
            caller.f_trace = jump
            sys.settrace(lambda *a: None)
            return Same()
    """), ADD_TESTS, "add", "has no attribute 'f_code'"),
    "an argument filled with objects": (SAME + _src("""
        def sort_in_place(xs):
            xs[:] = [Same(), Same(), Same()]
    """), "def check(candidate):\n    xs = [3, 1, 2]\n    candidate(xs)\n    assert xs == [1, 2, 3]\n",
        "sort_in_place", "into its arguments"),
    "earlier results rewritten later": (SAME + _src("""
        kept = []
        def square(x):
            for out in kept:
                out[0] = Same()
            kept.append([0])
            return kept[-1]
    """), _src("""
        def check(candidate):
            results = [candidate(x) for x in (1, 2, 3)]
            candidate(0)
            assert results == [[1], [4], [9]]
    """), "square", "AssertionError"),
    "a generator yielding objects": (SAME + "def add(a, b):\n    yield Same()\n",
                                     "def check(candidate):\n    assert list(candidate(1, 2)) == [3]\n",
                                     "add", "returned a Same object"),
    "a generator patching between items": (_src("""
        import builtins
        def add(a, b):
            yield a + b
            builtins.len = lambda x: 1
            yield 0
    """), "def check(candidate):\n    assert len(list(candidate(1, 2))) == 1\n", "add", "modified builtins"),
    "a module the solution imported": ("import math\nmath.isclose = lambda *a, **k: True\n"
                                       "def area(r):\n    return 0.0\n",
                                       "def check(f):\n    assert math.isclose(f(1.0), 3.14159)\n",
                                       "area", "AssertionError"),
    "a fake module on sys.path": (_src("""
        import sys
        with open("/tmp/fractions.py", "w") as fake:
            fake.write("class S:\\n    def __eq__(self, other):\\n        return True\\n"
                       "def __getattr__(name):\\n    return lambda *a, **k: S()\\n")
        sys.path.insert(0, "/tmp")
        def add(a, b):
            return 0
    """), _src("""
        def check(candidate):
            import fractions
            assert candidate(1, 2) == fractions.Fraction(3)
    """), "add", "AssertionError"),
    "an import path changed in a call": ("import sys\ndef add(a, b):\n    sys.path.insert(0, '/tmp')\n"
                                         "    return a + b\n", ADD_TESTS, "add", "how modules are imported"),
    "the guard's constants, found through object.__subclasses__()": (SAME + _src("""
        def add(a, b):
            for kind in object.__subclasses__():
                if kind.__name__ == "_Watch":
                    kind.check.__globals__["_ATOMS"].add(id(Same))
            return Same()
    """), ADD_TESTS, "add", "returned a Same object"),
    "the guard's constants, rebound through a function the tests hand over": (SAME + _src("""
        def add(a, b, f):
            guard = f.__globals__["add"].__globals__
            guard["_ATOMS"] = frozenset(guard["_ATOMS"] | {id(Same)})
            return Same()
    """), "def check(candidate):\n    assert candidate(2, 2, lambda: 0) == 4\n", "add",
        "modified the sandbox's guard"),
    "a cached function": (SAME + "import functools\n@functools.cache\ndef add(a, b):\n    return Same()\n",
                          ADD_TESTS, "add", "returned a Same object"),
    "a bound method": (SAME + "class Solution:\n    def add(self, a, b):\n        return Same()\n"
                       "add = Solution().add\n", ADD_TESTS, "add", "returned a Same object"),
    "a partial": (SAME + "import functools\ndef _add(a, b):\n    return Same()\n"
                  "add = functools.partial(_add)\n", ADD_TESTS, "add", "returned a Same object"),
    "a callable instance": (SAME + "class Adder:\n    def __call__(self, a, b):\n        return Same()\n"
                            "add = Adder()\n", ADD_TESTS, "add", "returned a Same object"),
    "a class whose __new__ answers": (SAME + "class add:\n    def __new__(cls, a, b):\n"
                                      "        return Same()\n", ADD_TESTS, "add", "returned a Same object"),
    "the same class, called by top-level asserts": (
        SAME + "class add:\n    def __new__(cls, a, b):\n        return Same()\n",
        "assert add(2, 2) == 4\nassert add(1, 2) == 3\n", None, "returned a Same object"),
    "a function with globals of its own": (
        SAME + "exec('def add(a, b):\\n    return Same()', {'Same': Same}, g := {})\nadd = g['add']\n",
        ADD_TESTS, "add", "returned a Same object"),
    "builtins the solution redefines": (
        "def abs(x):\n    return 0\ndef sorted(x):\n    return 0\ndef add(a, b):\n    return [7]\n",
        "def check(candidate):\n    assert abs(candidate(2, 2)[0] - 4) < 1e-6\n"
        "    assert sorted(candidate(1, 2)) == sorted([3])\n", "add", "AssertionError"),
    "an object standing in for a module the tests use": (
        "class FakeMath:\n    def isclose(self, *a, **k):\n        return True\nmath = FakeMath()\n"
        "def area(r):\n    return 0.0\n",
        "def check(f):\n    assert math.isclose(f(1.0), 3.14159)\n", "area", "NameError"),
    "a subinterpreter, where our audit hook is not": (
        "import _xxsubinterpreters as si\nsi.run_string(si.create(), 'import ctypes')\n"
        "def add(a, b):\n    return 0\n", ADD_TESTS, "add", "'_xxsubinterpreters' is not available"),
    "an exception lying about its message": (_src("""
        class Lying(str):
            def __eq__(self, other):
                return True
            __hash__ = str.__hash__
        class Wrong(ValueError):
            def __str__(self):
                return Lying("no")
        def root(x):
            raise Wrong()
    """), _src("""
        def check(candidate):
            try:
                candidate(-1)
            except ValueError as error:
                assert str(error) == "negative input"
    """), "root", "AssertionError"),
    "the tests' builtins, through their callback": (
        "def apply(xs, f):\n    f.__builtins__['sorted'] = lambda *a, **k: [2, 4, 6]\n    return []\n",
        "def check(candidate):\n    assert sorted(candidate([3, 1, 2], lambda x: x * 2)) == [2, 4, 6]\n",
        "apply", "modified the tests' names or builtins"),
    "the tests' builtins, through their class": (_src("""
        def add(a, b):
            for kind in object.__subclasses__():
                if kind.__name__ == "TreeNode":
                    kind.__init__.__builtins__["abs"] = lambda x: 0
            return 0
    """), "class TreeNode:\n    def __init__(self):\n        pass\n"
        "def check(candidate):\n    assert abs(candidate(2, 2) - 4) < 1e-9\n",
        "add", "modified the tests' names or builtins"),
    "a module planted in sys.modules during a call": (_src("""
        import sys
        class Same:
            def __eq__(self, other):
                return True
        def add(a, b):
            fake = type(sys)("fractions")
            fake.Fraction = lambda *a, **k: Same()
            sys.modules.setdefault("fractions", fake)
            return 0
    """), _src("""
        def check(candidate):
            assert candidate(0, 0) == 0
            from fractions import Fraction
            assert candidate(1, 2) == Fraction(3)
    """), "add", "AssertionError"),
    "an argument list poisoned later, by a __del__": (SAME + _src("""
        class Later:
            def __init__(self, target):
                self.target = target
            def __del__(self):
                self.target[:] = [Same()] * len(self.target)
        def sort_it(nums):
            later = Later(nums)
            return lambda: later
    """), "def check(candidate):\n    nums = [3, 1, 2]\n    candidate(nums)\n    assert nums == [1, 2, 3]\n",
        "sort_it", "AssertionError"),
    "a violation swallowed by the test": (SAME + "def add(a, b):\n    return Same()\n", _src("""
        def check(candidate):
            try:
                assert candidate(1, 2) == 3
            except BaseException:
                pass
    """), "add", "returned a Same object"),
}  # fmt: skip


@pytest.mark.parametrize("name", FORGERIES)
def test_non_data_never_reaches_a_comparison(name: str) -> None:
    solution, tests, entry, reason = FORGERIES[name]
    result = run_tests(solution, tests, entry)
    assert result.status in ("wrong", "runtime_error") and reason in result.reason, result.reason


# Each reaches the supervisor's variables and writes the protocol lines itself: every one but the
# ctypes import forged a pass (2/2) before the fence (frames, the collector's lists, ctypes refused
# by an audit hook; signal handlers by the test runs' seccomp filter).
FORGE_FROM_FRAMES = _src("""
    import os, re, sys
    def forge_from(spec):
        for token in re.findall(r"'([0-9a-f]{16,})'", spec["tests"]):
            os.write(3, f"ok {token}\\n".encode())
        os.write(3, f"end {spec['end_token']}\\n".encode())
        os._exit(0)
    def forge(frame):
        while frame is not None:
            spec = frame.f_locals.get("spec")
            if type(spec) is dict and "end_token" in spec:
                forge_from(spec)
            frame = frame.f_back
    def add(a, b):
""")
FRAME_ROUTES = {
    "sys._getframe": ("forge(sys._getframe())", "AssertionError"),  # None, as without frames
    "a traceback": ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    forge(e.__traceback__.tb_frame)",
                    "AttributeError: tb_frame is not available"),
    "a running generator": ("def gen():\n    forge(g.gi_frame)\n    yield 1\ng = gen()\nnext(g)",
                            "AttributeError: gi_frame is not available"),
    "a signal handler": ("import signal\nsignal.signal(signal.SIGUSR1, lambda n, f: forge(f))\n"
                         "os.kill(os.getpid(), signal.SIGUSR1)", "PermissionError"),
    "the collector": ("import gc\nfor o in gc.get_objects():\n    if type(o) is dict and 'end_token' in o:\n"
                      "        forge_from(o)", "RuntimeError: gc.get_objects is not available"),
    "the threads' frames": ("forge(sys._current_frames()[__import__('threading').get_ident()])",
                            "KeyError"),
    "ctypes": ("import ctypes\nforge(ctypes.c_char_p)", "ImportError: module 'ctypes' is not available"),
    "ctypes under another name": (
        "import glob, importlib.util\nspec = importlib.util.spec_from_file_location("
        "'x._ctypes', glob.glob('/usr/lib/python3*/lib-dynload/_ctypes*.so')[0])\n"
        "forge(importlib.util.module_from_spec(spec))", "ImportError: module 'x._ctypes' is not available"),
}  # fmt: skip


@pytest.mark.parametrize("route", FRAME_ROUTES)
def test_the_supervisors_variables_are_out_of_reach(route: str) -> None:
    body, reason = FRAME_ROUTES[route]
    result = run_tests(FORGE_FROM_FRAMES + textwrap.indent(body, "        ") + "\n        return 0\n",
                       ADD_TESTS, "add")
    assert result.status != "passed" and result.passed_tests == 0, (result.status, result.reason)
    assert result.reason.startswith(reason), result.reason


def test_the_standard_library_works_behind_the_fence() -> None:
    """namedtuple, typing and enum ask sys._getframe for their caller's module (and fall back on the
    ValueError); importing dataclasses, inspect or pprint loads importlib, which renames a module the
    watch snapshots: all were judged wrong before."""
    source = _src("""
        import dataclasses, enum, inspect, pprint, typing
        from collections import namedtuple
        Pair = namedtuple("Pair", "a b")
        Color = enum.Enum("Color", "RED GREEN")
        class Point(typing.NamedTuple):
            x: int
        @dataclasses.dataclass
        class Box:
            size: int
        def add(a, b):
            arity = len(inspect.signature(add).parameters)
            return Box(Pair(a, b).a + Point(b).x).size * Color.RED.value + arity - 2
    """)
    result = run_tests(source, ADD_TESTS, "add")
    assert result.status == "passed", result.reason


def test_collections_results_reach_the_tests_as_genuine_copies() -> None:
    """Counter, OrderedDict, defaultdict, deque and namedtuple results were judged wrong (not built-in
    data); now each is rebuilt from collections' own classes, so a lying subclass still fails."""
    cases = [
        ("from collections import Counter\ndef f(s):\n    return Counter(s)\n",
         "def check(c):\n    r = c('abca')\n    assert r == {'a': 2, 'b': 1, 'c': 1} and r['z'] == 0\n"
         "    assert r.most_common(1) == [('a', 2)]\n"),
        ("from collections import OrderedDict\ndef f(s):\n    d = OrderedDict((k, 1) for k in s)\n"
         "    d.move_to_end(s[0])\n    return d\n",
         "def check(c):\n    assert list(c('abc')) == ['b', 'c', 'a']\n"),
        ("from collections import defaultdict\ndef f(xs):\n    d = defaultdict(list)\n    for x in xs:\n"
         "        d[x % 2].append(x)\n    return d\n",
         "def check(c):\n    r = c([1, 2, 3])\n    assert r == {1: [1, 3], 0: [2]} and r[5] == []\n"),
        ("from collections import deque\ndef f(xs):\n    return deque(xs, maxlen=2)\n",
         "def check(c):\n    r = c([1, 2, 3])\n    assert list(r) == [2, 3] and r.maxlen == 2\n"),
        ("from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
         "def f(a):\n    return [P(a, a + 1)]\n",
         "def check(c):\n    r = c(1)\n    assert r == [(1, 2)] and r[0].y == 2\n"),
        ("from typing import NamedTuple\nclass P(NamedTuple):\n    x: int\n    y: int = 0\ndef f(a):\n"
         "    return P(a)\n", "def check(c):\n    assert c(3) == (3, 0) and c(3).x == 3\n"),
    ]  # fmt: skip
    for source, tests in cases:
        result = run_tests(source, tests, "f")
        assert result.status == "passed", (source, result.reason)
    equal = "def check(c):\n    assert c(3) == (3,)\n"
    lying = [
        ("from collections import namedtuple\nclass P(namedtuple('P', 'x')):\n    def __eq__(self, o):\n"
         "        return True\ndef f(a):\n    return P(0)\n", equal, "returned a P object"),
        ("from collections import namedtuple\nP = namedtuple('P', 'x')\nP.__eq__ = lambda self, o: True\n"
         "def f(a):\n    return P(0)\n", equal, "AssertionError"),
        ("from collections import defaultdict\ndef f(a):\n    return defaultdict(lambda: (a,))\n",
         "def check(c):\n    assert c(3)['x'] == (3,)\n", "KeyError"),
    ]  # fmt: skip
    for source, tests, reason in lying:
        result = run_tests(source, tests, "f")
        assert result.status != "passed" and reason in result.reason, (source, result.reason)


def test_tests_may_drive_a_solution_class_and_asyncio_runs() -> None:
    """A class the tests call hands over its own instances (LeetCode's `Solution().method`);
    asyncio.run sets a SIGINT handler, which the seccomp filter would refuse: SIGINT starts ignored."""
    source = _src("""
        import asyncio
        class Solution:
            def add(self, a, b):
                return asyncio.run(self._add(a, b))
            async def _add(self, a, b):
                return a + b
    """)
    tests = "def check(candidate):\n    assert Solution().add(2, 2) == 4\n"
    assert run_tests(source, tests, None).status == "passed"


def test_ordinary_solutions_the_fence_must_not_break() -> None:
    """Each was judged wrong by some version of the guard: strptime (time.tzset rebinds time.tzname),
    logging (its caller's frame), doctest.testmod (it restores the trace hook), a dataclass under
    `from __future__ import annotations` and `sys.modules[__name__]` (the solution's module by name),
    in-place changes to nested arguments (written back from the solution's copies), a message test."""
    cases = [
        ("from datetime import datetime\ndef add(a, b):\n"
         "    return datetime.strptime('2000-01-%02d' % (a + b + 1), '%Y-%m-%d').day - 1\n",
         ADD_TESTS, "add"),
        ("import logging\nlogging.basicConfig(level=logging.INFO)\ndef add(a, b):\n"
         "    logging.getLogger(__name__).warning('adding')\n    return a + b\n", ADD_TESTS, "add"),
        ('def add(a, b):\n    """\n    >>> add(1, 1)\n    2\n    """\n    return a + b\n'
         "import doctest\ndoctest.testmod()\n", ADD_TESTS, "add"),
        ("from __future__ import annotations\nimport dataclasses, sys\nMODULE = sys.modules[__name__]\n"
         "@dataclasses.dataclass\nclass Pair:\n    a: int\n    b: int\n"
         "def add(a, b):\n    return Pair(a, b).a + Pair(a, b).b\n", ADD_TESTS, "add"),
        ("def grow(grid, extra):\n    grid[0].append(extra)\n    grid.append([extra])\n    grid.sort()\n",
         _src("""
            def check(candidate):
                row = [1]
                grid = [row]
                candidate(grid, 0)
                assert grid == [[0], [1, 0]] and grid[1] is row
         """), "grow"),
        ("def root(x):\n    if x < 0:\n        raise ValueError('negative input')\n    return x ** 0.5\n",
         "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError as error:\n"
         "        assert str(error) == 'negative input' and error.args == ('negative input',)\n"
         "    assert candidate.__name__ == 'root'\n", "root"),
    ]  # fmt: skip
    for source, tests, entry in cases:
        result = run_tests(source, tests, entry)
        assert result.status == "passed", (source, result.reason, result.stderr[-500:])


def test_a_failed_test_still_shows_its_traceback() -> None:
    result = run_tests("def add(a, b):\n    return a - b\n", ADD_TESTS, "add")
    assert result.status == "wrong"
    assert 'Traceback (most recent call last):\n' in result.stderr
    assert 'File "<tests>", line 2, in check\nAssertionError' in result.stderr


def test_programs_may_still_set_signal_handlers() -> None:
    """Only runs against test code refuse them: stdin/stdout programs often reset SIGPIPE."""
    result = run_program("import signal\nsignal.signal(signal.SIGPIPE, signal.SIG_DFL)\nprint(1)\n")
    assert (result.status, result.stdout) == ("passed", "1\n")


def test_patched_module_is_reimported_fresh_for_the_tests() -> None:
    source = "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 0.0\n"
    tests = _src("""
        def check(candidate):
            import math
            assert math.isclose(candidate(1.0), 3.14159, rel_tol=1e-3)
    """)
    assert run_tests(source, tests, "area").status == "wrong"


def test_forged_verdict_lines_fail() -> None:
    # Three "ok" lines (as many as the test has asserts) and "done" on every descriptor, a fake
    # record line, then an exit before the real tests run: only the issued tokens count.
    forge = _src("""
        import os
        fake = b"ok 0123456789abcdef\\nok 1123456789abcdef\\nok 2123456789abcdef\\ndone\\n"
        fake += b"end " + b"0" * 32 + b"\\n"
        fake += b"0" * 32 + b" {'runs': [], 'syntax_error': None}\\n"
        for fd in range(64):
            try:
                os.write(fd, fake)
            except OSError:
                pass
        print("PASSED all tests")
    """)
    result = run_tests(forge + "import os\nos._exit(0)\n", ADD_TESTS, "add")
    assert result.status == "wrong" and "forged" in result.reason and result.passed_tests == 0
    assert run_program(forge + "raise SystemExit(1)").status == "runtime_error"


def test_record_needs_this_runs_sentinel() -> None:
    line = b"abc {'runs': [], 'syntax_error': None}\n"
    assert runner._parse_record(b"noise\n" + line, b"abc") == {"runs": [], "syntax_error": None}
    assert runner._parse_record(line, b"abd") is None
    assert runner._parse_record(b"abc __import__('os').system('id')\n", b"abc") is None


def test_expected_outputs_stay_hidden() -> None:
    # The marker is built at run time inside a function, so only a leak would put it in a container.
    spy = _src("""
        import gc, os
        def scan(suffix):
            key = input() + suffix
            hits = [type(o).__name__ for o in gc.get_objects() if key in repr(o)]
            for _, _, names in os.walk("/tmp"):
                hits += names
            return hits
        print(scan("-answer-42") or "nothing")
    """)
    result = run_io_cases(spy, [("hidden", "hidden-answer-42")])
    assert result.status == "wrong" and result.stdout == "nothing\n"


# ---------------------------------------------------------------- policy, errors, units


def test_missing_bwrap_is_refused_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {**detect_layers(), "bwrap": False, "seccomp": False}
    monkeypatch.setattr(isolation, "detect_layers", lambda: fake)
    monkeypatch.delenv(isolation.UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxError, match=r"(?s)\['bwrap'\] required.*apt-get install -y bubblewrap"):
        run_program("print(1)")
    with pytest.raises(SandboxError, match="required but not available"):
        run_many(["print(1)"])
    with pytest.raises(SandboxError, match="required but not available"):
        require_isolation()
    assert "bwrap" not in require_isolation(())
    with pytest.raises(SandboxError, match=r"unknown sandbox layer\(s\) \['docker'\]"):
        run_program("print(1)", require=("docker",))


def test_explicit_opt_out_reports_weaker_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {**detect_layers(), "bwrap": False, "seccomp": False}
    monkeypatch.setattr(isolation, "detect_layers", lambda: fake)
    monkeypatch.setenv(isolation.UNSAFE_ENV, isolation.UNSAFE_VALUE)
    result = run_program("print(6 * 7)")
    assert result.stdout == "42\n" and "bwrap" not in result.layers and "rlimits" in result.layers


def test_infrastructure_failure_is_sandbox_error_not_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    real = isolation.plan()
    broken = isolation.Plan(layers=real.layers, python="/usr/bin/no-such-python", seccomp=real.seccomp,
                            private_pids=real.private_pids)  # fmt: skip
    monkeypatch.setattr(runner, "plan", lambda require=None: broken)
    result = run_tests(ADD_OK, ADD_TESTS, "add")
    assert result.status == "sandbox_error" and result.reward is None
    assert result.reason.startswith("the sandbox did not start")


def test_supervisor_failure_is_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bug = "def _compile(*a):\n    raise RuntimeError('boom')\n\n\ndef _unused("
    monkeypatch.setattr(isolation, "_HARNESS", isolation._HARNESS.replace("def _compile(", bug))
    result = run_program("print(1)")
    assert result.status == "sandbox_error" and result.reward is None
    assert result.reason == "the sandbox's supervisor failed: RuntimeError: boom"


def test_tiny_output_limits_still_give_a_verdict() -> None:
    flood = "import os\nos.write(3, b''.join(b'ok %032d\\n' % i for i in range(5000)))\n" + ADD_OK
    tiny = Limits(max_output_bytes=16, max_file_bytes=16)
    result = run_tests(flood, ADD_TESTS, "add", tiny)
    assert result.status == "wrong" and "forged" in result.reason


def test_bad_test_code_is_sandbox_error() -> None:
    cases = {"def check(:": "does not parse", "def check(c):\n    c(1)\n": "no assert statement",
             "assert add(1, 2) == 3\n": "defines no check()"}  # fmt: skip
    for tests, message in cases.items():
        result = run_tests(ADD_OK, tests, "add")
        assert result.status == "sandbox_error" and message in result.reason and result.reward is None
    assert run_io_cases("print(1)", []).reason == "no stdin/stdout cases to check"


def test_limits_and_files_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"Limits.wall_s must be a number > 0, got 0"):
        Limits(wall_s=0)
    with pytest.raises(ConfigError, match=r"2 config errors.*\n.*memory_mb must be an int > 0, got 0.5"):
        Limits(memory_mb=0.5, max_processes=-1)
    with pytest.raises(ValueError, match=r"give test_code .* or cases .*, not both"):
        run_many([Program("pass", test_code="assert 1", cases=[("", "")])])
    with pytest.raises(ValueError, match=r"files: '\.\./x' must be a relative path"):
        run_program("pass", files={"../x": "no"})


def test_result_reward_mapping() -> None:
    assert SandboxResult("passed").reward == 1.0 and SandboxResult("timeout").reward == 0.0
    assert SandboxResult("sandbox_error").reward is None and not SandboxResult("wrong").passed


def test_instrumentation_adds_one_token_per_assert() -> None:
    source, tokens = runner.instrument_tests(ADD_TESTS, "OK")
    assert len(tokens) == 3 and len(set(tokens)) == 3
    assert all(f"OK('{t}')" in source for t in tokens)


def test_plain_copy_is_equal_and_shares_nothing_mutable() -> None:
    rng = random.Random(0)

    def build(depth: int) -> object:
        atoms = [rng.randint(-5, 5), rng.random(), "s", b"b", None, True, range(2), 1j]
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(atoms)
        items = [build(depth - 1) for _ in range(rng.randint(0, 4))]
        hashable = [rng.choice(atoms[:6]), (rng.randint(0, 3), "k")]
        return rng.choice([items, tuple(items), {rng.randint(0, 9): v for v in items}, set(hashable),
                           frozenset(hashable), {1: items}.items(), dict.fromkeys(hashable).keys(),
                           bytearray(b"xy")])  # fmt: skip

    def mutable_ids(value: object, found: set[int]) -> set[int]:
        if isinstance(value, list | dict | set | bytearray):
            found.add(id(value))
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list | tuple | set | frozenset):
            for item in value:
                mutable_ids(item, found)
        return found

    for _ in range(300):
        value = build(4)
        copy = guard._plain_copy(value, "f")
        assert type(copy) is type(value) and copy == value
        assert not mutable_ids(copy, set()) & mutable_ids(value, set())
    shared, loop = [1], [0]
    loop.append(loop)
    copy = guard._plain_copy({"a": shared, "b": shared, "loop": loop}, "f")
    assert copy["a"] is copy["b"] and copy["a"] is not shared and copy["loop"][1] is copy["loop"]


def test_seccomp_filter_shapes() -> None:
    x86, arm = build_filter("x86_64"), build_filter("aarch64")
    assert x86 is not None and arm is not None and len(x86) % 8 == 0 and len(arm) % 8 == 0
    assert len(x86) == len(arm) + 2 * 8 + 2 * 8  # x32 check (2) and iopl/ioperm (2) only on x86_64
    assert build_filter("riscv64") is None
