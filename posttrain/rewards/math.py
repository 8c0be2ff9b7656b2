"""`math_verify_answer`: symbolic comparison with math-verify, in a worker process that can be killed.

math-verify (sympy underneath) can freeze the interpreter on inputs like `9^{9^{9^{9}}}`: the
work happens inside C big-integer code that neither a thread nor a signal can interrupt. So the
comparison runs in a separate, persistent worker process, reused across calls, and each item
gets a wall-clock timeout (default 5 s). On timeout the worker is killed (SIGKILL), a fresh one
is started, and the item scores None ("not applicable": excluded, never a silent 0.0).

Design choices:
- The worker is a plain `subprocess` running `python -P -c <source of _worker_main>`, talking
  JSON lines over pipes. It does not go through multiprocessing "spawn"/"forkserver" because those
  re-import the user's `__main__` script in the child, which re-runs an unguarded training script;
  a plain subprocess imports only math-verify, and can be killed the same way.
- math-verify's own signal timeouts are switched off in the worker: when they fire, math-verify
  answers False, which would turn an infrastructure problem into a "wrong answer" 0.0.
- On Linux the worker asks the kernel to kill it when the thread that started it ends, so no
  stuck worker outlives a crashed trainer. Workers are therefore started from one long-lived
  launcher thread, not from the caller's thread, which may be short-lived.
- Why an item scored None is counted in `posttrain.rewards.answers.NONE_REASONS` under
  "math_verify_answer: <reason>" (timeout, gold not parseable, math-verify error, worker died).
- The predicted answer is the `<answer>` content (a `\\boxed{}` inside it unwrapped), else the
  last `\\boxed{}`; it is handed to math-verify wrapped in `\\boxed{...}` so the whole answer is
  parsed as one expression ("1 2 3 85" does not become "85"). No answer, an answer longer than
  `max_answer_chars` or one with a LaTeX line break (`\\\\`, a way to list candidates) score 0.0.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from posttrain.errors import RewardError
from posttrain.rewards.answers import NONE_REASONS, completion_text, extract_boxed, extract_tag


def _worker_main() -> None:
    """Entry point of the worker process; its source is sent with `python -c`, so it must be
    self-contained (no posttrain import: the package would import torch for nothing)."""
    import contextlib
    import ctypes
    import json
    import os
    import sys

    parent = int(sys.argv[1])
    # Linux: die with the parent even while stuck in C code (PR_SET_PDEATHSIG = 1, SIGKILL = 9).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, 9)
    if os.getppid() != parent:
        return
    try:
        from math_verify import parse, verify

        parse("\\boxed{1}", parsing_timeout=None)  # loads sympy now, outside any item's timeout
    except Exception as error:
        print(json.dumps({"fatal": f"cannot use math-verify ({type(error).__name__}: {error})"}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            gold = parse(request["gold"], parsing_timeout=None)
            if len(gold) < 2:  # [expression, text] when parsed; [text] or [] when sympy failed
                reply = {"result": None, "reason": "gold not parseable"}
            else:
                predicted = parse(request["predicted"], parsing_timeout=None)
                reply = {"result": bool(verify(gold, predicted, timeout_seconds=None)), "reason": ""}
        except Exception as error:
            reply = {"result": None, "reason": f"math-verify error {type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


# Starts the worker processes: the worker dies with the thread that started it (see above).
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="math-verify-launcher")


def _pump(stream: IO[str], replies: queue.Queue[str | None]) -> None:
    """Move the worker's output lines to a queue, so the parent can wait on it with a timeout."""
    for line in stream:
        replies.put(line)
    replies.put(None)


def _boxed(answer: str) -> str:
    return answer if "\\boxed" in answer else "\\boxed{" + answer + "}"


def math_answer(text: str) -> str | None:
    """The answer math-verify should judge: `<answer>` content (a box inside unwrapped), else the
    last `\\boxed{}`; None when there is none or it is empty."""
    tagged = extract_tag(text, "answer")
    if tagged is not None:
        inner = extract_boxed(tagged)
        answer = inner if inner is not None else tagged
    else:
        answer = extract_boxed(text)
    return answer or None


class MathVerifier:
    """A reward function (TRL signature, `answer` column) backed by a killable math-verify worker.

    `verify(gold, predicted) -> (True | False | None, reason)` compares two answers; calling the
    object scores completions. `close()` stops the worker (it also stops when Python exits).
    """

    def __init__(
        self, timeout_s: float = 5.0, startup_timeout_s: float = 120.0, max_answer_chars: int = 1000
    ):
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.max_answer_chars = max_answer_chars
        self.restarts = 0  # workers killed after a timeout or a crash
        self.reasons: Counter[str] = Counter()  # this verifier's None reasons
        self._process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._ready = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> None:
        source = inspect.getsource(_worker_main) + "\n_worker_main()\n"
        self._process = _LAUNCHER.submit(
            subprocess.Popen,
            [sys.executable, "-P", "-c", source, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # math-verify warns on every call without timeouts
            text=True,
            encoding="utf-8",
        ).result()
        self._replies = queue.Queue()
        self._ready = False
        assert self._process.stdout is not None
        threading.Thread(target=_pump, args=(self._process.stdout, self._replies), daemon=True).start()

    @property
    def worker_pid(self) -> int | None:
        """Process id of the current worker, None before the first call or after close()."""
        return self._process.pid if self._process is not None else None

    def _wait_ready(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._start()
        if self._ready:
            return
        try:
            line = self._replies.get(timeout=self.startup_timeout_s)
        except queue.Empty:
            self._kill()
            raise RewardError(
                f"math_verify_answer: the math-verify worker did not start in {self.startup_timeout_s:g} s"
            ) from None
        message = json.loads(line) if line else {"fatal": "the worker exited while starting"}
        if "fatal" in message:
            self._kill()
            raise RewardError(f"math_verify_answer: {message['fatal']}; is math-verify installed?")
        self._ready = True

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
        self._process = None
        self._ready = False

    def close(self) -> None:
        """Stop the worker; the next call starts a new one."""
        with self._lock:
            self._kill()

    def verify(self, gold: str, predicted: str) -> tuple[bool | None, str]:
        """(is predicted equal to gold, "") or (None, reason) when it cannot be decided."""
        with self._lock:
            self._wait_ready()
            assert self._process is not None and self._process.stdin is not None
            try:
                request = {"gold": _boxed(gold), "predicted": _boxed(predicted)}
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
                line = self._replies.get(timeout=self.timeout_s)
            except queue.Empty:
                self._restart()
                return None, "timeout"
            except OSError:
                line = None
            if line is None:
                self._restart()
                return None, "worker died"
            reply = json.loads(line)
            return reply["result"], reply["reason"]

    def _restart(self) -> None:
        """Kill the worker and start the next one now, so it loads while the caller goes on."""
        self._kill()
        self.restarts += 1
        self._start()

    def _score(self, text: str, gold: Any) -> float | None:
        if gold is None or not str(gold).strip():
            return self._none("gold answer empty")
        answer = math_answer(text)
        if answer is None or len(answer) > self.max_answer_chars or "\\\\" in answer:
            return 0.0
        result, reason = self.verify(str(gold).strip(), answer)
        if result is None:
            return self._none(reason.split(":")[0])
        return 1.0 if result else 0.0

    def _none(self, reason: str) -> None:
        self.reasons[reason] += 1
        NONE_REASONS[f"math_verify_answer: {reason}"] += 1
        return None

    def __call__(
        self, prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **kwargs: Any
    ) -> list[float | None]:
        if answer is None:
            raise ValueError("math_verify_answer needs the gold answers in an 'answer' column; none given")
        if len(answer) != len(completions):
            raise ValueError(
                f"math_verify_answer: {len(answer)} gold answers for {len(completions)} completions"
            )
        return [self._score(completion_text(c), gold) for c, gold in zip(completions, answer)]


_DEFAULT = MathVerifier()


def math_verify_answer(
    prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **kwargs: Any
) -> list[float | None]:
    """1.0 when the completion's answer (`<answer>` tag or `\\boxed{}`) equals the gold `answer`
    according to math-verify ("\\frac{1}{2}" == "0.5"), else 0.0; None when the gold does not parse
    or the check timed out after 5 s (see the module docstring)."""
    return _DEFAULT(prompts, completions, answer=answer, **kwargs)
