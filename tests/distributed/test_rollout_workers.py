"""Rollout workers on a real two-node Ray cluster: the samples of one process, the weights of every
optimizer step, stale rollouts refused, and a GRPO run that completes after a worker is SIGKILLed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from posttrain import distributed
from posttrain.config import ClusterConfig, ModelConfig, load_config
from posttrain.distributed import ClusterError
from posttrain.logprobs import token_logprobs
from posttrain.recipes import grpo
from posttrain.rollout import Rollouts, SamplingParams, generate
from posttrain.runner import load_policy

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Count to three:"]  # 3 prompts: shares of 2 and 1


def _start(address: str, model_config: ModelConfig, max_staleness: int = 0) -> None:
    distributed.start(SimpleNamespace(cluster=ClusterConfig(address=address, rollout_workers=2,
                                                            max_staleness=max_staleness), model=model_config))


def _assert_same_samples(got: Rollouts, want: Rollouts) -> None:
    assert got.completion_ids == want.completion_ids and got.texts == want.texts
    assert got.prompt_ids == want.prompt_ids and got.prompt_index == want.prompt_index
    assert got.finish_reasons == want.finish_reasons
    for mine, theirs in zip(got.logprobs, want.logprobs):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)


def test_two_rollout_workers_give_the_samples_of_one_process(ray_cluster: str, tiny_model_dir: str) -> None:
    model_config = ModelConfig(name=tiny_model_dir, autocast="none")
    model, tokenizer, _ = load_policy(model_config)
    params = SamplingParams(max_new_tokens=6, seed=123)
    want = generate(model, tokenizer, PROMPTS, 2, params)
    torch.manual_seed(7)  # no seed: drawn from the global RNG, the same draw as one process's
    want_unseeded = generate(model, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=6))
    _start(ray_cluster, model_config)
    sample = distributed.rollout_sampler()
    got = sample(model, tokenizer, PROMPTS, 2, params)
    _assert_same_samples(got, want)
    assert got.weight_version == 0 and len({tuple(ids) for ids in got.completion_ids}) > 1
    torch.manual_seed(7)
    unseeded = sample(model, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=6))
    _assert_same_samples(unseeded, want_unseeded)
    # an equal prompt in each worker's share (shares of 2 and 1): still one process's samples, so the
    # second copy's samples are not the first copy's again
    repeated = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    for options in ({}, {"slots": 0}):  # the slot engine and the batch engine
        got = sample(model, tokenizer, repeated, 2, params, engine_options=options)
        _assert_same_samples(got, generate(model, tokenizer, repeated, 2, params, engine_options=options))
        assert got.completion_ids[4:] != got.completion_ids[:2]


def test_a_bf16_engine_is_sent_bf16_weights_and_samples_as_one_process(ray_cluster: str,
                                                                       tiny_model_dir: str) -> None:
    import ray

    model_config = ModelConfig(name=tiny_model_dir, autocast="none")
    model, tokenizer, _ = load_policy(model_config)
    with torch.no_grad():  # weights the worker's config does not have, so they must come from the push
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    params, bf16 = SamplingParams(max_new_tokens=6, seed=5), {"dtype": "bfloat16"}
    want = generate(model, tokenizer, PROMPTS, 2, params, engine_options=bf16)
    _start(ray_cluster, model_config)
    got = distributed.rollout_sampler()(model, tokenizer, PROMPTS, 2, params, engine_options=bf16)
    _assert_same_samples(got, want)
    sent = ray.get(distributed._session.rollout_pool._weights["bfloat16"])
    assert {tensor.dtype for tensor in sent.values()} == {torch.bfloat16}
    # the same version asked for an fp32 engine: sent again, in fp32, and the worker loads it
    want_fp32 = generate(model, tokenizer, PROMPTS, 2, params)
    _assert_same_samples(distributed.rollout_sampler()(model, tokenizer, PROMPTS, 2, params), want_fp32)
    assert got.weight_version == 0


@pytest.mark.parametrize("lora_rank", [0, 4])  # with LoRA only the adapter is sent; the base is the config's
def test_workers_sample_with_each_optimizer_steps_weights(ray_cluster: str, tiny_model_dir: str,
                                                          lora_rank: int) -> None:
    model_config = ModelConfig(name=tiny_model_dir, autocast="none", lora_rank=lora_rank)
    model, tokenizer, _ = load_policy(model_config)
    params = SamplingParams(max_new_tokens=6, seed=5)
    _start(ray_cluster, model_config)
    sample = distributed.rollout_sampler()
    before = sample(model, tokenizer, PROMPTS, 2, params)
    distributed.check_on_policy(model, before)  # current: nothing raised
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _scored(model, tokenizer, before)[0].sum().backward()
    optimizer.step()
    with pytest.raises(ClusterError, match=r"stale rollouts: sampled with weight version 0, but the policy "
                                           r"is at version 1 \(1 optimizer step\(s\) since\)"):
        distributed.check_on_policy(model, before)
    after = sample(model, tokenizer, PROMPTS, 2, params)
    assert after.weight_version == 1
    distributed.check_on_policy(model, after)
    with torch.no_grad():
        rescored, sampled = _scored(model, tokenizer, after)
    assert (sampled - rescored).abs().max() <= 1e-5, "sampled with the weights after the step"
    old = _scored(model, tokenizer, before)[1]
    assert after.completion_ids != before.completion_ids or not torch.allclose(sampled, old, atol=1e-3)
    # shares of 2 and 1 prompts on the workers sample what one process samples (with LoRA: the batch
    # engine, whose rows are padded to other widths there, hence log-probs to 1e-5, not bit for bit)
    want = generate(model, tokenizer, PROMPTS, 2, params)
    assert after.completion_ids == want.completion_ids
    for mine, theirs in zip(after.logprobs, want.logprobs):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    if lora_rank == 0:  # a LoRA model samples with the batch engine, whose samples depend on the split
        _assert_same_samples(after, generate(model, tokenizer, PROMPTS, 2, params))


def _scored(model: Any, tokenizer: Any, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, T] the completion tokens' log-probs under ``model`` now, and as sampled."""
    batch = rollouts.to_batch(tokenizer.pad_token_id or 0)
    rescored, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    return rescored, batch["logprobs"]


KILLS_A_ROLLOUT_WORKER = '''
from pathlib import Path

MARKS = Path({marks!r})


def length_and_kill(completions, **kwargs):
    """The completions' lengths; at its first call (step 1), rollout worker 0 is made to SIGKILL itself
    in its next sample call (step 2), once."""
    if not (MARKS / "armed").exists():
        (MARKS / "armed").write_text("")
        import ray
        from posttrain import distributed

        def arm(worker, marks):
            import os
            import signal
            from posttrain.rollout import TorchEngine

            def dies(*args, **kwargs):
                Path(marks, "killed").write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

            TorchEngine.generate = dies  # in this worker's process only; a restarted one has its own

        ray.get(distributed._session.rollout_pool.workers[0].__ray_call__.remote(arm, str(MARKS)))
    return [float(len(str(completion))) for completion in completions]
'''


def _run(model_dir: str, out: Path, reward: str, *overrides: str) -> Path:
    config = load_config(grpo.Config, None, [
        f"model.name={model_dir}", "model.autocast=none", f"run.output_dir={out}", "run.name=t",
        "run.progress=false", "run.steps=3", "prompts_per_step=2", "samples_per_prompt=4",
        "micro_batch_size=8", "sampling.max_new_tokens=4", "sampling.dtype=float32", "optim.lr=1e-2",
        "data.train=arithmetic", "data.train_size=20", "data.eval_size=0", f"rewards=[{reward}]", *overrides])
    return grpo.train(config)


def _lines(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_killed_rollout_worker_is_restarted_and_the_run_completes(ray_cluster: str, tiny_model_dir: str,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "marks").mkdir()
    reward_file = tmp_path / "kills.py"
    reward_file.write_text(KILLS_A_ROLLOUT_WORKER.format(marks=str(tmp_path / "marks")))
    on_cluster = _run(tiny_model_dir, tmp_path / "ray", f"{reward_file}:length_and_kill",
                      f"cluster.address={ray_cluster}", "cluster.rollout_workers=2")
    assert (tmp_path / "marks" / "killed").exists(), "worker 0 was killed in step 2"
    one_process = _run(tiny_model_dir, tmp_path / "one", f"{Path(__file__).parent / 'lengths.py'}:length")
    metrics = [m for m in _lines(on_cluster, "metrics.jsonl") if "rollout/reward" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    samples = _lines(on_cluster, "samples.jsonl")
    assert [s["step"] for s in samples] == [1] * 8 + [2] * 8 + [3] * 8
    want = _lines(one_process, "samples.jsonl")
    assert [s["completion"] for s in samples] == [s["completion"] for s in want], \
        "the redone share was sampled with the current weights, as one process samples"
    want = [m["rollout/reward"] for m in _lines(one_process, "metrics.jsonl") if "rollout/reward" in m]
    assert [m["rollout/reward"] for m in metrics] == pytest.approx(want)


def test_sampling_ahead_takes_the_weights_of_its_submission(ray_cluster: str, tiny_model_dir: str) -> None:
    """max_staleness 1: rollouts submitted before an optimizer step are those of the weights before it,
    taken by the call with the same arguments (another call in between leaves them), one version behind
    and accepted; two versions behind is refused."""
    model_config = ModelConfig(name=tiny_model_dir, autocast="none")
    model, tokenizer, _ = load_policy(model_config)
    params = SamplingParams(max_new_tokens=6, seed=5)
    want = generate(model, tokenizer, PROMPTS, 2, params)  # the weights before the step
    _start(ray_cluster, model_config, max_staleness=1)
    sample = distributed.rollout_sampler()
    distributed.sample_ahead(model, tokenizer, PROMPTS, 2, params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _scored(model, tokenizer, want)[0].sum().backward()
    optimizer.step()
    other = sample(model, tokenizer, PROMPTS[:1], 2, params)  # not the call sampled ahead: current weights
    assert other.weight_version == 1
    ahead = sample(model, tokenizer, PROMPTS, 2, params)
    _assert_same_samples(ahead, want)
    assert ahead.weight_version == 0
    distributed.check_on_policy(model, ahead)
    assert ahead.staleness == 1 and other.staleness is None
    fresh = sample(model, tokenizer, PROMPTS, 2, params)  # nothing ahead any more: sampled now
    assert fresh.weight_version == 1 and fresh.completion_ids != want.completion_ids
    optimizer.zero_grad()
    _scored(model, tokenizer, fresh)[0].sum().backward()
    optimizer.step()
    sample(model, tokenizer, PROMPTS[:1], 2, params)  # pushes version 2
    stale = r"weight version 0, but the policy is at version 2 \(2 optimizer step\(s\) since\), more than "
    with pytest.raises(ClusterError, match=stale + r"cluster.max_staleness=1 allows"):
        distributed.check_on_policy(model, ahead)


def test_one_step_off_survives_a_killed_worker_and_resumes(ray_cluster: str, tiny_model_dir: str,
                                                          tmp_path: Path) -> None:
    """max_staleness 1: each step after the first trains on rollouts sampled during the step before (one
    version behind, TIS on); worker 0 SIGKILLed in a share sampled ahead is restarted and redoes it; a run
    stopped after step 2 resumes (its first step sampled afresh); every step once in metrics and samples."""
    (tmp_path / "marks").mkdir()
    reward_file = tmp_path / "kills.py"
    reward_file.write_text(KILLS_A_ROLLOUT_WORKER.format(marks=str(tmp_path / "marks")))
    cluster = (f"cluster.address={ray_cluster}", "cluster.rollout_workers=2", "cluster.max_staleness=1")
    run_dir = _run(tiny_model_dir, tmp_path / "ray", f"{reward_file}:length_and_kill", *cluster)
    assert (tmp_path / "marks" / "killed").exists(), "worker 0 was killed while sampling step 3 ahead"
    metrics = [m for m in _lines(run_dir, "metrics.jsonl") if "rollout/reward" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["rollout/staleness"] for m in metrics] == [0, 1, 1]
    assert all(m["rollout/is_weight_mean"] > 0 and "rollout/is_ratio_max" in m for m in metrics)
    assert [s["step"] for s in _lines(run_dir, "samples.jsonl")] == [1] * 8 + [2] * 8 + [3] * 8
    lengths = f"{Path(__file__).parent / 'lengths.py'}:length"
    _run(tiny_model_dir, tmp_path / "resumed", lengths, *cluster, "run.steps=2", "run.save_every=2")
    resumed = _run(tiny_model_dir, tmp_path / "resumed", lengths, *cluster, "run.steps=4", "run.save_every=2",
                   "run.resume=true")
    metrics = [m for m in _lines(resumed, "metrics.jsonl") if "rollout/reward" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [m["rollout/staleness"] for m in metrics] == [0, 1, 0, 1]
    assert [s["step"] for s in _lines(resumed, "samples.jsonl")] == [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8


def test_rollouts_of_two_weight_versions_are_not_one_batch() -> None:
    def part(version: int) -> Rollouts:
        return Rollouts(prompt_ids=[[1]], completion_ids=[[2, 3]], texts=["x"], logprobs=[torch.zeros(2)],
                        finish_reasons=["stop"], prompt_index=[0], timing={"seconds": 1.0},
                        weight_version=version)

    both = Rollouts.concat([part(3), part(3)])
    assert both.weight_version == 3 and both.prompt_index == [0, 0] and both.timing == {"seconds": 2.0}
    with pytest.raises(ValueError, match=r"rollouts of weight versions \[3, 4\] cannot be one batch"):
        Rollouts.concat([part(3), part(4)])
