"""A real two-node Ray cluster for the scale-out tests: `ray start --head` and `ray start --address`,
each a separate process with 1 CPU, on free ports in a temporary folder; stopped by their own process
ids at the end (`ray stop` would stop every Ray process on the machine, other people's too)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# One authentication mode for the test clusters and this process: a local ray.init() turns token
# authentication on for its process, and `ray start` does wherever ~/.ray/auth_token exists.
os.environ["RAY_AUTH_MODE"] = "disabled"
NODE_CPUS = 1
OBJECT_STORE_BYTES = 80 * 2**20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray_command() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    assert found, "the `ray` command is missing: pip install 'posttrain[distributed]' (scripts/setup.sh does)"
    return found


def _start_node(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with log.open("wb") as out:
        return subprocess.Popen([_ray_command(), "start", "--block", "--num-cpus", str(NODE_CPUS),
                                 "--object-store-memory", str(OBJECT_STORE_BYTES),
                                 "--dashboard-agent-listen-port", str(_free_port()), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop_node(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `ray start --block` stops its node's processes; whatever is left of its process
    group is killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for_cpus(address: str, cpus: float, logs: list[Path], timeout: float = 120.0) -> None:
    """Wait for the head's port to answer, then for the cluster to count ``cpus`` CPUs."""
    import ray

    deadline = time.monotonic() + timeout

    def check(done: bool, what: str) -> None:
        if not done and time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs if log.exists())
            raise TimeoutError(f"the test Ray cluster at {address}: {what} within {timeout:g} s\n{tails}")

    host, _, port = address.rpartition(":")
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            check(False, "the head did not listen")
            time.sleep(0.3)
    ray.init(address=address, logging_level="WARNING")
    try:
        while ray.cluster_resources().get("CPU", 0) < cpus:
            check(False, f"fewer than {cpus:g} CPUs joined")
            time.sleep(0.2)
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address (host:port) of a running two-node Ray cluster with 2 CPUs in all."""
    folder = Path(tempfile.mkdtemp(prefix="pt-ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [_start_node(["--head", "--port", str(port), "--temp-dir", str(folder),
                          "--ray-client-server-port", str(_free_port()), "--include-dashboard", "false",
                          "--disable-usage-stats"], folder / "head.log")]
    try:
        _wait_for_cpus(address, NODE_CPUS, [folder / "head.log"])
        nodes.append(_start_node(["--address", address], folder / "node.log"))
        _wait_for_cpus(address, 2 * NODE_CPUS, [folder / "head.log", folder / "node.log"])
        yield address
    finally:
        for node in reversed(nodes):  # the worker node first, while the head can still drain it
            _stop_node(node)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_session_left() -> Iterator[None]:
    """A test that fails mid-run leaves no cluster session for the next one."""
    yield
    from posttrain import distributed

    distributed.shutdown()
