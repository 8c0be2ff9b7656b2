"""Collections filled with hand-written candidates (no model), shared by the collect tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from posttrain.collect.db import Collection

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16, "stop": []}


def fill(path: Path, prompts: dict[str, list[str]], mode: str = "rank") -> Collection:
    """A collection at ``path`` in ``mode`` holding ``prompt -> candidate texts``."""
    collection = Collection(path)
    collection.set_mode(mode)
    for prompt, texts in prompts.items():
        candidates = [{"text": t, "finish_reason": "stop", "model": "hand", "sampling": SAMPLING, "seed": 7}
                      for t in texts]
        collection.add_prompt(prompt, "test", candidates)
    return collection


@pytest.fixture
def make_collection(tmp_path: Path) -> Callable[..., Collection]:
    """``make_collection(prompts, mode="rank", name="c.db")`` -> a filled Collection."""

    def make(prompts: dict[str, list[str]], mode: str = "rank", name: str = "c.db") -> Collection:
        return fill(tmp_path / name, prompts, mode)

    return make


def three_prompts() -> dict[str, Any]:
    return {f"What is {i} + {i}?": [f"{2 * i}", f"{2 * i + 1}", f"maybe {i}"] for i in range(1, 4)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m posttrain.collect serve`` in a subprocess; returns it and its URL once it answers."""
    port = _free_port()
    log = db.parent / f"server-{port}.log"  # a file, not a pipe nobody reads, which could fill up
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "posttrain.collect", "serve", "--db", str(db),
                                    "--port", str(port), *args], stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api/state", timeout=1)
            return process, url
        except httpx.TransportError:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}") from None
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not start within 20 s")
