"""Sandbox throughput: programs per second, sequential and pooled, against a bare interpreter launch.

    python benchmarks/sandbox.py [--n 40] [--workers N]

Prints, for a trivial program and a HumanEval-sized test (typing import, 8 asserts), the time
per program and programs per second run one by one (`run_program` / `run_tests`) and through
`run_many`, and each as a ratio to a plain `python3 -I -c pass` launch (the floor any
process-per-program design pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable

from posttrain.sandbox import Limits, Program, run_many, run_program, run_tests
from posttrain.sandbox.isolation import SANDBOX_PYTHON

SOLUTION = '''from typing import List


def below_zero(operations: List[int]) -> bool:
    """True if the running balance ever drops below zero."""
    balance = 0
    for op in operations:
        balance += op
        if balance < 0:
            return True
    return False
'''
TESTS = """def check(candidate):
    assert candidate([]) == False
    assert candidate([1, 2, -3, 1, 2, -3]) == False
    assert candidate([1, 2, -4, 5, 6]) == True
    assert candidate([1, -1, 2, -2, 5, -5, 4, -4]) == False
    assert candidate([1, -1, 2, -2, 5, -5, 4, -5]) == True
    assert candidate([1, -2, 2, -2, 5, -5, 4, -4]) == True
    assert candidate([0]) == False
    assert candidate([-1]) == True
"""


def _per_item(fn: Callable[[], object], n: int) -> float:
    """Median seconds of n sequential calls."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pooled(jobs: list[str | Program], workers: int) -> float:
    """Seconds per program when `run_many` runs all of `jobs` on `workers` workers."""
    start = time.perf_counter()
    results = run_many(jobs, Limits(), max_workers=workers)
    elapsed = time.perf_counter() - start
    assert all(r.passed for r in results), {r.status for r in results}
    return elapsed / len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="programs per measurement")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    layers = run_program("pass").layers
    print(f"layers in force: {', '.join(layers)}; {args.n} programs per row; pool of {args.workers}")
    plain = _per_item(lambda: subprocess.run([SANDBOX_PYTHON, "-I", "-c", "pass"], check=True), args.n)
    print(f"{'plain `python3 -I -c pass`':34s} {plain * 1e3:7.1f} ms/program {1 / plain:7.1f}/s   1.00x")
    humaneval = Program(SOLUTION, test_code=TESTS, entry_point="below_zero")
    rows = [
        ("trivial program, one by one", _per_item(lambda: run_program("pass"), args.n)),
        ("trivial program, run_many", _pooled(["pass"] * args.n, args.workers)),
        ("HumanEval-sized test, one by one",
         _per_item(lambda: run_tests(SOLUTION, TESTS, "below_zero"), args.n)),
        ("HumanEval-sized test, run_many", _pooled([humaneval] * args.n, args.workers)),
    ]  # fmt: skip
    for name, seconds in rows:
        print(f"{name:34s} {seconds * 1e3:7.1f} ms/program {1 / seconds:7.1f}/s {seconds / plain:6.2f}x")


if __name__ == "__main__":
    main()
