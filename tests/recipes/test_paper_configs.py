"""The named GRPO variants in configs/papers: each loads, sets its paper's values and names its sources."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from posttrain.config import load_config, read_yaml
from posttrain.errors import ConfigError
from posttrain.recipes import grpo
from posttrain.tracking import read_metrics

PAPERS = Path(__file__).resolve().parents[2] / "configs" / "papers"
OURS = {"model.name": "smollm2-135m-instruct", "data.train": "arithmetic", "rewards": ["task_correct"]}

# file -> (arXiv id, models the paper trained, the values the file must set)
EXPECTED: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "deepseekmath-grpo.yaml": ("2402.03300", ("DeepSeekMath-Instruct 7B",), {
        "samples_per_prompt": 64, "prompts_per_step": 16, "optim.lr": 1e-6, "beta": 0.04,
        "kl_estimator": "k3", "reference": "frozen", "sampling.max_new_tokens": 1024, "ppo_epochs": 1,
        "loss_agg": "sequence_mean", "advantage_baseline": "mean", "advantage_scale": "group_std",
        "optimizer_steps_per_rollout": 1}),
    "dr-grpo.yaml": ("2503.20783", ("Qwen2.5-Math-7B",), {
        "advantage_scale": "none", "loss_agg": "constant", "advantage_baseline": "mean", "beta": 0.0,
        "samples_per_prompt": 8, "sampling.max_new_tokens": 3000, "sampling.temperature": 1.0,
        "sampling.top_k": 0, "optim.lr": 1e-6, "optim.schedule": "constant", "optim.beta2": 0.95,
        "optim.weight_decay": 0.0, "optim.max_grad_norm": 1.0, "clip_eps_low": 0.2, "clip_eps_high": 0.2,
        "ppo_epochs": 1, "prompts_per_step": 128, "optimizer_steps_per_rollout": 8, "optim.warmup_steps": 0}),
    "dapo.yaml": ("2503.14476", ("Qwen2.5-32B",), {
        "clip_eps_low": 0.2, "clip_eps_high": 0.28, "loss_agg": "token_mean", "beta": 0.0,
        "filter_zero_std_groups": True, "dynamic_sampling_rounds": 29, "mask_truncated": True,
        "samples_per_prompt": 16, "prompts_per_step": 512, "sampling.max_new_tokens": 20480,
        "optim.lr": 1e-6, "optim.warmup_steps": 320, "advantage_baseline": "mean",
        "advantage_scale": "group_std", "ppo_epochs": 1, "optimizer_steps_per_rollout": 16}),
    "rloo.yaml": ("2402.14740", ("Pythia-6.9B", "Llama-7B"), {
        "advantage_baseline": "leave_one_out", "advantage_scale": "none", "loss_agg": "constant",
        "ppo_epochs": 1, "samples_per_prompt": 4, "prompts_per_step": 128, "beta": 0.1, "optim.lr": 1e-6,
        "optimizer_steps_per_rollout": 2, "optim.warmup_steps": 24, "run.steps": 393}),
}
_KEY = re.compile(r"^(\s*)([a-z_0-9]+):(.*)$")
# a quoted sentence, an equation of the paper, or an explicit statement that the paper is not the source
_SOURCED = ('"', "eq. (", "not stated in the paper", "not from the paper", "as summarised")


def _load(name: str, overrides: list[str] | None = None) -> grpo.Config:
    return load_config(grpo.Config, PAPERS / name, overrides or [])


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _settings(text: str) -> list[tuple[str, str]]:
    """Each `key: value` line with the comment block above it (shared by the keys that follow it)."""
    out: list[tuple[str, str]] = []
    block: list[str] = []
    after_key = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block = [*block, stripped] if not after_key else [stripped]
            after_key = False
            continue
        match = _KEY.match(line)
        if not stripped or (match and not match.group(3).split("#")[0].strip()):
            block, after_key = [], False  # a blank line or a section header ends a comment's reach
            continue
        if match:
            out.append((match.group(2), " ".join(block)))
            after_key = True
    return out


def test_every_paper_config_is_checked() -> None:
    # pipelines (a `stages` list: r1*.yaml) are checked in test_pipeline.py
    grpo_files = {p.name for p in PAPERS.glob("*.yaml") if "stages" not in read_yaml(p)}
    assert grpo_files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_with_the_papers_values(name: str) -> None:
    config = _load(name)
    for key, value in {**OURS, **EXPECTED[name][2]}.items():
        expected = pytest.approx(value) if isinstance(value, float) else value
        assert _get(config, key) == expected, f"{name}: {key} = {_get(config, key)!r}"


def test_deepseekmath_batch_is_1024_sequences() -> None:
    config = _load("deepseekmath-grpo.yaml")
    assert config.prompts_per_step * config.samples_per_prompt == 1024


def test_dr_grpo_normaliser_is_the_generation_budget() -> None:
    # Listing 1's MAX_TOKENS is the maximum number of generation tokens: the constant aggregation divides
    # by N · sampling.max_new_tokens, so the two must stay the same number (Table 6: 3000).
    config = _load("dr-grpo.yaml")
    assert config.loss_agg == "constant" and config.sampling.max_new_tokens == 3000


def test_dapo_mini_batches_are_512_sequences_and_warm_up_is_20_rollout_steps() -> None:
    # §4.1: mini-batches of 512 are 16 updates per rollout step of 512 · 16 sequences; the warm-up over 20
    # rollout steps is counted in optimizer steps here.
    config = _load("dapo.yaml")
    n_sequences = config.prompts_per_step * config.samples_per_prompt
    assert n_sequences // config.optimizer_steps_per_rollout == 512
    assert config.optim.warmup_steps == 20 * config.optimizer_steps_per_rollout == 320


def test_rloo_warm_up_is_3_percent_of_its_optimizer_steps() -> None:
    config = _load("rloo.yaml")
    optimizer_steps = config.run.steps * config.optimizer_steps_per_rollout * config.ppo_epochs
    assert optimizer_steps == 786 and config.optim.warmup_steps == round(0.03 * optimizer_steps) == 24
    assert config.prompts_per_step * config.samples_per_prompt // config.optimizer_steps_per_rollout == 256


def _smoke_overrides(name: str) -> list[str]:
    header = " ".join((PAPERS / name).read_text().split("\n\n")[0].replace("#", " ").split())
    segment = header.split("smoke run of the same algorithm:")[1].split("Keys not set")[0]
    return [token.rstrip(".") for token in segment.split() if "=" in token]


def _whole_groups_per_step(config: grpo.Config) -> bool:
    n_sequences = config.prompts_per_step * config.samples_per_prompt
    per_step, rest = divmod(n_sequences, config.optimizer_steps_per_rollout)
    return rest == 0 and per_step % config.samples_per_prompt == 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mini_batches_hold_whole_groups_at_full_and_smoke_size(name: str) -> None:
    assert _whole_groups_per_step(_load(name))
    assert _whole_groups_per_step(_load(name, _smoke_overrides(name)))


def test_whole_groups_check_sees_a_split_group() -> None:
    config = _load("dapo.yaml", ["prompts_per_step=2", "samples_per_prompt=8",
                                 "optimizer_steps_per_rollout=4"])
    assert not _whole_groups_per_step(config)


def test_dapo_smoke_size_without_its_override_is_refused() -> None:
    # 16 mini-batches need at least 16 sequences: the one-step sizes below (2 · 4 = 8) must lower it.
    message = r"optimizer_steps_per_rollout must be in 1\.\.8 \(P·G sequences\); got 16"
    with pytest.raises(ConfigError, match=message):
        _load("dapo.yaml", ["prompts_per_step=2", "samples_per_prompt=4"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_names_the_paper_its_models_and_the_limits(name: str) -> None:
    arxiv, models, _ = EXPECTED[name]
    header = (PAPERS / name).read_text().split("\n\n")[0]
    assert f"arXiv:{arxiv}" in header
    assert "Not expressible here:" in header
    for model in (*models, "SmolLM2-135M-Instruct"):
        assert model in header, f"{name}: header does not name {model}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_setting_carries_its_source(name: str) -> None:
    settings = _settings((PAPERS / name).read_text())
    assert len(settings) >= 10
    for key, comment in settings:
        assert comment, f"{name}: '{key}' has no comment above it"
        assert any(mark in comment for mark in _SOURCED), f"{name}: '{key}' names no source: {comment}"


def test_settings_parser_sees_missing_comments() -> None:
    text = "# header\n\nmodel:\n  name: x\n# \"quoted\"\nbeta: 0.1\nclip: 0.2\n# new block\n\nlr: 1\n"
    assert _settings(text) == [("name", ""), ("beta", '# "quoted"'), ("clip", '# "quoted"'), ("lr", "")]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_smoke_run_overrides_in_the_header_load(name: str) -> None:
    overrides = _smoke_overrides(name)
    assert len(overrides) >= 4
    config = _load(name, overrides)
    assert config.prompts_per_step == 2 and config.run.steps == 5


def test_readme_table_lists_every_variant() -> None:
    readme = (PAPERS / "README.md").read_text().split("# Pipelines")[0]  # the GRPO variants' table
    rows = [line for line in readme.splitlines() if line.startswith("| [`")]
    assert sorted(re.findall(r"\| \[`([\w.-]+\.yaml)`\]", "\n".join(rows))) == sorted(EXPECTED)
    for name, (arxiv, _, _) in EXPECTED.items():
        assert any(name in row and f"arXiv:{arxiv}" in row for row in rows), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_step_runs_on_a_tiny_model(name: str, tiny_model_dir: str, tmp_path: Path) -> None:
    # The paper's switches (reference model, leave-one-out, constant normaliser, dynamic sampling with
    # filtering, masked truncations, several optimizer steps per rollout) all run; only the sizes shrink,
    # to 2 · 4 = 8 sequences, so at most 2 mini-batches of one whole group each.
    steps_per_rollout = min(_load(name).optimizer_steps_per_rollout, 2)
    config = _load(name, [f"optimizer_steps_per_rollout={steps_per_rollout}",
        f"model.name={tiny_model_dir}", "model.autocast=none", f"run.output_dir={tmp_path}", "run.name=t",
        "run.progress=false", "run.steps=1", "run.eval_every=0", "prompts_per_step=2", "samples_per_prompt=4",
        "micro_batch_size=4", "sampling.max_new_tokens=4", "sampling.dtype=float32", "optim.warmup_steps=4",
        "dynamic_sampling_rounds=1", "data.train_size=16", "data.eval_size=2"])
    run_dir = grpo.train(config)
    metrics = read_metrics(run_dir)
    assert any("rollout/reward" in m for m in metrics)
    # the warm-up counts optimizer steps: the rollout step's last one ran at lr · steps_per_rollout / 4
    lrs = [m["train/lr"] for m in metrics if "train/lr" in m]
    assert lrs == [pytest.approx(config.optim.lr * steps_per_rollout / 4)]
    if config.beta > 0:
        assert any("policy/kl" in m for m in metrics)
