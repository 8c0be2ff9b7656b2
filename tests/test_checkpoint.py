"""Checkpoints: exact resume, atomic saves under crashes and kill -9, corruption, rotation, LoRA."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import posttrain.checkpoint as checkpoint
from posttrain.checkpoint import (
    Checkpointer,
    capture_rng_state,
    find_resume_checkpoint,
    restore_rng_state,
    verify_checkpoint,
)
from posttrain.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]


def _small_model(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 1))


def _optim(model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 4) * 0.9**i)
    return optimizer, schedule


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(64, 8, generator=generator)  # [64, 8]
    return x, x.sum(dim=1, keepdim=True)  # [64, 1]


def _train(model: nn.Module, optimizer: Any, schedule: Any, sampler: torch.Generator,
           start: int, stop: int) -> list[tuple[list[int], float, float]]:
    """Uses every RNG a recipe touches: sampler (data order), torch (dropout), numpy, python."""
    x, y = _data()
    log = []
    model.train()
    for _ in range(start, stop):
        index = torch.randint(0, 64, (8,), generator=sampler)
        scale = 1.0 + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        loss = ((model(x[index]) - y[index]) ** 2).mean() * scale
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        log.append((index.tolist(), lr, loss.item()))
    return log


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _saved_run(tmp_path: Path, steps: tuple[int, ...] = (1, 2), keep_last: int = 2,
               ) -> tuple[Checkpointer, nn.Module, Any, Any]:
    model = _small_model()
    optimizer, schedule = _optim(model)
    checkpointer = Checkpointer(tmp_path, keep_last=keep_last)
    sampler = torch.Generator().manual_seed(0)
    done = 0
    for step in steps:
        _train(model, optimizer, schedule, sampler, done, step)
        done = step
        checkpointer.save(step, model, optimizer, schedule, {"cursor": step * 8})
    return checkpointer, model, optimizer, schedule


def _rehash(path: Path) -> None:
    """Make the manifest agree with the files again: what a careful attacker would do."""
    manifest = json.loads((path / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (path / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------- exact resume


def test_resume_is_bit_identical_to_uninterrupted_run(tmp_path: Path) -> None:
    total, cut = 12, 5
    _seed_all(0)
    model = _small_model()
    optimizer, schedule = _optim(model)
    full_log = _train(model, optimizer, schedule, torch.Generator().manual_seed(7), 0, total)

    _seed_all(0)
    first = _small_model()
    optimizer, schedule = _optim(first)
    sampler = torch.Generator().manual_seed(7)
    first_log = _train(first, optimizer, schedule, sampler, 0, cut)
    saved = Checkpointer(tmp_path).save(cut, first, optimizer, schedule, {"cursor": cut * 8},
                                        generators={"data": sampler})
    assert saved.name == "step-00000005"

    _seed_all(99)  # a new process: every RNG elsewhere, fresh objects
    resumed = _small_model(seed=42)
    optimizer, schedule = _optim(resumed)
    sampler = torch.Generator().manual_seed(1234)
    state = Checkpointer(tmp_path).load(find_resume_checkpoint(tmp_path), resumed, optimizer,
                                        schedule, generators={"data": sampler})
    assert state == {"cursor": 40, "step": 5}
    second_log = _train(resumed, optimizer, schedule, sampler, state["step"], total)

    assert first_log + second_log == full_log  # data order, LR and loss at every step
    for (name, expected), actual in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(expected, actual), name
    assert schedule.last_epoch == total


def test_rng_state_round_trip_covers_python_numpy_torch_and_generators() -> None:
    sampler, shuffler = torch.Generator().manual_seed(3), random.Random(5)
    state = capture_rng_state({"sampler": sampler, "shuffler": shuffler})
    expected = (random.random(), np.random.rand(), torch.rand(2).tolist(),
                torch.rand(2, generator=sampler).tolist(), shuffler.random())
    _seed_all(77)
    sampler.manual_seed(0)
    shuffler.seed(0)
    restore_rng_state(state, {"sampler": sampler, "shuffler": shuffler})
    assert (random.random(), np.random.rand(), torch.rand(2).tolist(),
            torch.rand(2, generator=sampler).tolist(), shuffler.random()) == expected
    with pytest.raises(KeyError, match="no generator named 'other'"):
        restore_rng_state(state, {"other": torch.Generator()})
    with pytest.raises(TypeError, match="'sampler' is a Random but a torch generator was saved"):
        restore_rng_state(state, {"sampler": random.Random()})
    with pytest.raises(TypeError, match=r"must be a torch\.Generator or random\.Random, got int"):
        capture_rng_state({"bad": 3})


def test_tied_weights_are_stored_once_and_restored(tiny_model: nn.Module, tokenizer: Any,
                                                   tmp_path: Path) -> None:
    from posttrain.models import tiny_model as build

    path = Checkpointer(tmp_path).save(3, tiny_model, None, None, {})
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        keys, aliases = set(handle.keys()), json.loads(handle.metadata()["aliases"])
    assert aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in keys
    fresh = build(tokenizer, layers=2, hidden=64, seed=1)
    assert not torch.equal(fresh.lm_head.weight, tiny_model.lm_head.weight)
    assert Checkpointer(tmp_path).load(path, fresh, None, None) == {"step": 3}
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()


def test_lora_saves_only_adapter_weights_and_restores_them(tiny_model: nn.Module, tokenizer: Any,
                                                           tmp_path: Path) -> None:
    from posttrain.models import add_lora
    from posttrain.models import tiny_model as build

    torch.manual_seed(0)
    model = add_lora(tiny_model, rank=2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_()  # lora_B starts at zero: make every adapter weight distinct
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    path = Checkpointer(tmp_path).save(1, model, optimizer, None, {})
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(trainable)
        assert handle.metadata()["scope"] == "trainable"
    assert all("lora_" in name for name in trainable)

    torch.manual_seed(1)
    fresh = add_lora(build(tokenizer, layers=2, hidden=64, seed=0), rank=2)
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad])
    Checkpointer(tmp_path).load(path, fresh, fresh_optimizer, None)
    for name, parameter in fresh.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter, trainable[name]), name

    plain = build(tokenizer, layers=2, hidden=64, seed=0)
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match the model's "
                                              r"trainable parameters: \d+ missing: .*unexpected"):
        Checkpointer(tmp_path).load(path, plain, None, None)


# ------------------------------------------------------------------------- crashes during save


def test_failure_mid_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    ) -> None:
    checkpointer, model, optimizer, schedule = _saved_run(tmp_path, steps=(1,), keep_last=1)
    real_write = checkpoint._write_part

    def crash_on_rng(directory: Path, name: str, write: Any) -> None:
        if name == "rng.pt":
            (directory / name).write_bytes(b"half")
            raise OSError(28, "No space left on device")
        real_write(directory, name, write)

    monkeypatch.setattr(checkpoint, "_write_part", crash_on_rng)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step-00000002 .*No space "
                                              r"left on device.*previous checkpoints are untouched"):
        checkpointer.save(2, model, optimizer, schedule, {})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000001"]
    assert checkpointer.latest() == tmp_path / "checkpoints" / "step-00000001"


def test_stale_temporaries_and_incomplete_dirs_are_never_chosen(tmp_path: Path) -> None:
    checkpointer, model, optimizer, schedule = _saved_run(tmp_path, steps=(1,))
    directory = tmp_path / "checkpoints"
    (directory / ".tmp-step-00000002").mkdir()  # a process killed while writing step 2
    (directory / ".tmp-step-00000002" / "model.safetensors").write_bytes(b"partial")
    (directory / "step-00000003").mkdir()  # written by something else, no manifest
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step-00000003: .*manifest.json is "
                                         r"missing: the checkpoint is incomplete"):
        assert checkpointer.latest() == directory / "step-00000001"
    with pytest.warns(UserWarning, match=r"removing checkpoint .*step-00000003"):
        checkpointer.save(2, model, optimizer, schedule, {})
    assert not list(directory.glob(".tmp-*"))
    assert [step for step, _ in checkpointer.step_dirs()] == [2, 1]


_WORKER = textwrap.dedent("""
    import json, os, resource, sys, torch
    from pathlib import Path
    from posttrain.checkpoint import Checkpointer
    from posttrain.errors import CheckpointError

    def setup(run_dir):
        torch.manual_seed(0)
        model = torch.nn.Linear(512, 512)  # 1 MiB of weights, 2 MiB of Adam state
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        checkpointer = Checkpointer(run_dir, keep_last=1)
        latest = checkpointer.latest()
        step = 0 if latest is None else checkpointer.load(latest, model, optimizer, None)["step"]
        return model, optimizer, checkpointer, step

    def advance(model, optimizer, step):
        model(torch.ones(1, 512)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float(step))  # the weights say which step they belong to

    def train_forever(run_dir):
        model, optimizer, checkpointer, step = setup(run_dir)
        while True:
            step += 1
            advance(model, optimizer, step)
            checkpointer.save(step, model, optimizer, None, {"marker": step})

    def fill_disk(run_dir):
        model, optimizer, checkpointer, _ = setup(run_dir)
        advance(model, optimizer, 1)
        checkpointer.save(1, model, optimizer, None, {})
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        errors = []
        for limit in (500_000, 1_500_000):  # fails in model.safetensors, then in optimizer.pt
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            try:
                checkpointer.save(2, model, optimizer, None, {})
            except CheckpointError as error:
                errors.append(str(error))
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        print(json.dumps(errors), flush=True)

    # A zygote: torch is imported once, each command runs in a forked child that the test may kill.
    import safetensors.torch
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # its first construction imports for ~2 s
    for line in sys.stdin:
        command, run_dir = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                (train_forever if command == "train" else fill_disk)(Path(run_dir))
            finally:
                sys.stdout.flush()
                os._exit(0)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
""")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    script = tmp_path_factory.mktemp("worker") / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script)], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    yield process
    process.stdin.close()
    process.wait(timeout=30)


def _start(worker: subprocess.Popen[str], command: str, run_dir: Path) -> int:
    worker.stdin.write(f"{command} {run_dir}\n")
    worker.stdin.flush()
    return int(worker.stdout.readline())


def _newest_step(run_dir: Path) -> int:
    return max((step for step, _ in Checkpointer(run_dir).step_dirs()), default=0)


def test_kill_9_at_random_points_always_leaves_a_loadable_checkpoint(worker: Any, tmp_path: Path) -> None:
    delays = random.Random(0)
    previous, killed_mid_save = 0, 0
    for _ in range(10):
        pid = _start(worker, "train", tmp_path)
        deadline = time.monotonic() + 60
        while _newest_step(tmp_path) < previous + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delays.uniform(0.0, 0.08))  # saving is most of the loop: most kills land inside
        os.kill(pid, signal.SIGKILL)
        worker.stdout.readline()  # the zygote has reaped the child
        killed_mid_save += bool(list((tmp_path / "checkpoints").glob(".tmp-*")))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a complete checkpoint, not a fallback with a warning
            latest = Checkpointer(tmp_path).latest()
        assert latest is not None
        model = torch.nn.Linear(512, 512)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        state = Checkpointer(tmp_path).load(latest, model, optimizer, None)
        assert state["step"] == state["marker"] >= previous + 1
        assert torch.all(model.weight == state["step"]) and torch.all(model.bias == state["step"])
        assert len(optimizer.state_dict()["state"]) == 2
        previous = state["step"]
    assert killed_mid_save >= 1


def test_disk_full_mid_save_is_a_clean_error(worker: Any, tmp_path: Path) -> None:
    _start(worker, "fill", tmp_path)
    errors = json.loads(worker.stdout.readline())
    assert worker.stdout.readline() == "reaped\n"
    assert len(errors) == 2
    for error in errors:
        assert "could not write checkpoint" in error and "step-00000002" in error
        assert "File too large" in error
        assert "previous checkpoints are untouched" in error
    directory = tmp_path / "checkpoints"
    assert sorted(os.listdir(directory)) == ["step-00000001"]  # temp dirs removed
    assert verify_checkpoint(directory / "step-00000001")["step"] == 1


# ------------------------------------------------------------------------------- corruption


def _truncate(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _zero_payload(path: Path) -> None:
    file = path / "model.safetensors"
    data = file.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    file.write_bytes(data[:header] + bytes(len(data) - header))


@pytest.mark.parametrize(("damage", "message"), [
    (_truncate, r"model.safetensors has \d+ bytes but manifest.json says \d+: truncated"),
    (_zero_payload, r"model.safetensors does not match its sha256 in manifest.json: corrupted"),
    (lambda p: (p / "optimizer.pt").unlink(), r"optimizer.pt is missing \(listed in manifest.json\)"),
    (lambda p: (p / "manifest.json").write_text("{not json"), r"manifest.json is malformed"),
    (lambda p: (p / "manifest.json").write_text("[]"), r"manifest.json is malformed"),
    (lambda p: (p / "manifest.json").unlink(), r"manifest.json is missing"),
])
def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path: Path, damage: Any,
                                                           message: str) -> None:
    checkpointer, model, optimizer, schedule = _saved_run(tmp_path)
    newest = tmp_path / "checkpoints" / "step-00000002"
    damage(newest)
    with pytest.warns(UserWarning, match=rf"skipping checkpoint .*step-00000002: .*{message}"):
        assert checkpointer.latest() == tmp_path / "checkpoints" / "step-00000001"
    with pytest.raises(CheckpointError, match=message):
        checkpointer.load(newest, model, optimizer, schedule)
    with pytest.warns(UserWarning, match=r"resuming from .*step-00000001, the newest valid"):
        assert find_resume_checkpoint(tmp_path).name == "step-00000001"


def test_truncated_model_with_consistent_manifest_is_reported(tmp_path: Path) -> None:
    checkpointer, model, optimizer, schedule = _saved_run(tmp_path, steps=(1,))
    path = tmp_path / "checkpoints" / "step-00000001"
    _truncate(path)
    _rehash(path)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=r"model.safetensors cannot be read as safetensors .*the "
                                              r"file is damaged"):
        checkpointer.load(path, _small_model(seed=3), optimizer, schedule)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_wrong_shapes_and_optimizer_mismatch_are_named(tmp_path: Path) -> None:
    checkpointer, *_ = _saved_run(tmp_path, steps=(1,))
    path = tmp_path / "checkpoints" / "step-00000001"
    wide = _small_model(width=32)
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match the model's state_dict "
                                              r"entries: 3 wrong shape: 0.bias: saved \[16\], model \[32\]"):
        checkpointer.load(path, wide, None, None)
    model = _small_model()
    extra = torch.optim.AdamW([*model.parameters(), nn.Parameter(torch.zeros(2))])
    with pytest.raises(CheckpointError, match=r"optimizer.pt does not match the optimizer: parameter "
                                              r"groups of sizes \[4\] were saved, the optimizer has \[5\]"):
        checkpointer.load(path, model, extra, None)


def test_malicious_pickle_in_optimizer_file_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __init__(self, target: Path) -> None:
            self.target = target

        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(self.target), "w"))

    checkpointer, model, optimizer, schedule = _saved_run(tmp_path, steps=(1,))
    path = tmp_path / "checkpoints" / "step-00000001"
    torch.save({"state": Exploit(marker), "param_groups": []}, path / "optimizer.pt")
    control = tmp_path / "control"
    torch.save(Exploit(control), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()  # the payload works when unpickled unsafely

    with pytest.raises(CheckpointError, match=r"optimizer.pt has \d+ bytes but manifest.json says"):
        checkpointer.load(path, model, optimizer, schedule)
    _rehash(path)
    with pytest.raises(CheckpointError, match=r"optimizer.pt cannot be loaded safely \(UnpicklingError"):
        checkpointer.load(path, model, optimizer, schedule)
    assert not marker.exists()


def test_missing_optimizer_in_checkpoint_saved_without_one(tmp_path: Path) -> None:
    model = _small_model()
    path = Checkpointer(tmp_path).save(1, model, None, None, {})
    optimizer, _ = _optim(model)
    with pytest.raises(CheckpointError, match=r"optimizer.pt is missing: an optimizer was given to "
                                              r"load\(\) but the checkpoint was saved without one"):
        Checkpointer(tmp_path).load(path, model, optimizer, None)


def test_no_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"No valid checkpoint found in .*checkpoints: nothing to "
                                              r"resume from"):
        find_resume_checkpoint(tmp_path)
    assert Checkpointer(tmp_path).latest() is None
    (tmp_path / "checkpoints" / "step-00000004").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"No valid checkpoint .*\(invalid: .*step-00000004/"
                                              r"manifest.json is missing"):
        find_resume_checkpoint(tmp_path)


# ------------------------------------------------------------------------- rotation, arguments


def test_rotation_keep_last_one_always_leaves_one_valid(tmp_path: Path) -> None:
    checkpointer, model, optimizer, schedule = _saved_run(tmp_path, steps=(1,), keep_last=1)
    for step in range(2, 5):
        checkpointer.save(step, model, optimizer, schedule, {})
        assert [p.name for _, p in checkpointer.step_dirs()] == [f"step-{step:08d}"]
        assert verify_checkpoint(checkpointer.latest())["step"] == step


def test_rotation_keeps_newest_and_skips_incomplete(tmp_path: Path) -> None:
    checkpointer, model, optimizer, schedule = _saved_run(tmp_path, steps=(1, 2, 3), keep_last=2)
    assert [s for s, _ in checkpointer.step_dirs()] == [3, 2]
    _truncate(tmp_path / "checkpoints" / "step-00000003")
    checkpointer.save(4, model, optimizer, schedule, {})
    assert [s for s, _ in checkpointer.step_dirs()] == [4, 2]  # the damaged 3 does not count


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_saving_after_resuming_earlier_replaces_the_abandoned_future(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic_exchange: bool) -> None:
    checkpointer, model, optimizer, schedule = _saved_run(tmp_path, steps=(1, 2, 3), keep_last=3)
    exchanged = []
    real_exchange = checkpoint._exchange

    def exchange(first: Path, second: Path) -> bool:
        exchanged.append(second.name)
        return real_exchange(first, second) if atomic_exchange else False

    monkeypatch.setattr(checkpoint, "_exchange", exchange)
    checkpointer.load(tmp_path / "checkpoints" / "step-00000001", model, optimizer, schedule)
    with pytest.warns(UserWarning, match=r"removing checkpoint .*step-00000003: it is newer than the "
                                         r"step just saved \(2\)"):
        checkpointer.save(2, model, optimizer, schedule, {"cursor": "again"})
    assert [s for s, _ in checkpointer.step_dirs()] == [2, 1]
    assert exchanged == ["step-00000002"]
    assert json.loads((tmp_path / "checkpoints/step-00000002/state.json").read_text())["cursor"] == "again"
    assert verify_checkpoint(tmp_path / "checkpoints/step-00000002")["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_argument_errors(tmp_path: Path) -> None:
    model = _small_model()
    with pytest.raises(ConfigError, match="keep_last must be at least 1, got 0"):
        Checkpointer(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match=r"state\['step'\] is 3 but the checkpoint step is 4"):
        Checkpointer(tmp_path).save(4, model, None, None, {"step": 3})
    with pytest.raises(TypeError, match="state must be JSON-serialisable; got a object"):
        Checkpointer(tmp_path).save(4, model, None, None, {"bad": object()})
    state = {"kl": torch.tensor(0.25), "n": np.int64(7), "path": Path("/x")}
    path = Checkpointer(tmp_path).save(4, model, None, None, state)
    assert Checkpointer(tmp_path).load(path, model, None, None) == {"kl": 0.25, "n": 7, "path": "/x",
                                                                   "step": 4}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_and_generators_resume_exactly(tmp_path: Path) -> None:
    device = torch.device("cuda")
    _seed_all(0)
    torch.cuda.manual_seed_all(0)
    model = _small_model().to(device)
    sampler = torch.Generator(device=device).manual_seed(5)
    path = Checkpointer(tmp_path).save(1, model, None, None, {}, generators={"rollout": sampler})
    expected = (torch.rand(3, device=device), torch.rand(3, device=device, generator=sampler))
    torch.cuda.manual_seed_all(9)
    sampler.manual_seed(9)
    fresh = _small_model(seed=4).to(device)
    Checkpointer(tmp_path).load(path, fresh, None, None, generators={"rollout": sampler})
    assert all(p.device.type == "cuda" for p in fresh.parameters())
    for expected_tensor, actual in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(expected_tensor, actual)
    actual = (torch.rand(3, device=device), torch.rand(3, device=device, generator=sampler))
    assert torch.equal(expected[0], actual[0]) and torch.equal(expected[1], actual[1])
