"""Configs: YAML + overrides, unknown keys with suggestions, types, ranges, help text, the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from posttrain.cli import main as cli_main
from posttrain.config import ModelConfig, OptimConfig, RunConfig, help_text, load_config
from posttrain.errors import ConfigError


@dataclass
class Demo:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    beta: float = 0.0
    """KL coefficient."""
    rewards: list[str] = field(default_factory=lambda: ["a"])
    """Reward names."""

    def check(self) -> list[str]:
        return ["beta and rewards clash"] if self.beta == 7 else []


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3.0e-5\nbeta: 0.1\nrewards: [x, y]\n")
    config = load_config(Demo, path, ["optim.lr=1e-4", "run.steps=7", "rewards=p,q"])
    assert config.optim.lr == 1e-4 and config.beta == 0.1 and config.run.steps == 7
    assert config.rewards == ["p", "q"]
    assert config.optim.beta2 == OptimConfig().beta2


def test_every_problem_reported_together_with_suggestions(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(Demo, path, ["bta=1", "run.steps=ten", "optim.lr=-1", "model.lora_rank=1.5"])
    text = str(info.value)
    assert text.startswith("5 config errors:\n")
    assert f"in {path}: unknown key 'optim.lrr'; did you mean 'optim.lr'?" in text
    assert "on the command line: unknown key 'bta'; did you mean 'beta'?" in text
    assert "on the command line: 'run.steps': expected an integer, got 'ten'" in text
    assert "on the command line: 'model.lora_rank': expected an integer, got 1.5" in text
    assert "on the command line: 'optim.lr' must be > 0; got -1.0" in text


def test_override_problems_are_attributed_to_the_command_line_not_the_file(tmp_path: Path) -> None:
    """A bad key=value names the command line; the YAML file is only named for what it holds."""
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  lr: 1.0e-5\nbeta: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(Demo, path, ["optim.lr=-1"])
    assert str(info.value) == "config error on the command line: 'optim.lr' must be > 0; got -1.0"
    assert str(path) not in str(info.value)
    with pytest.raises(ConfigError, match=r"^config error on the command line: beta and rewards clash$"):
        load_config(Demo, path, ["beta=7"])  # a check() problem about an overridden key
    with pytest.raises(ConfigError, match=r"^config error on the command line: '\[1, 2\]' is not a section"
                                          r"|^config error on the command line: 'optim' is a section"):
        load_config(Demo, path, ["optim=[1, 2]"])
    with pytest.raises(ConfigError, match=r"^config error on the command line: override 'nokey' is not"):
        load_config(Demo, path, ["nokey"])
    path.write_text("optim:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=rf"^config error in {path}: 'optim.lr' must be > 0"):
        load_config(Demo, path, ["run.steps=3"])


@pytest.mark.parametrize(("override", "message"), [
    ("model.dtype=float64", "'model.dtype' must be one of float32, bfloat16, float16; got 'float64'"),
    ("run.progress=maybe", "'run.progress': expected true or false, got 'maybe'"),
    ("optim=3", "'optim' is a section: expected a mapping of its keys, got 3"),
    ("beta=7", "beta and rewards clash"),
    ("nokey", "override 'nokey' is not of the form key=value"),
    ("optim.schedule=cosin", "'optim.schedule' must be one of constant, linear, cosine; got 'cosin'"),
])
def test_single_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(Demo, None, [override])


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: [1, 2\nbeta: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        load_config(Demo, path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Demo, tmp_path / "none.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top level, got list"):
        load_config(Demo, path)


def test_help_lists_every_field_with_default_and_doc() -> None:
    text = help_text(Demo)
    assert "optim.lr = 1e-05" in text and "Peak learning rate." in text
    assert "beta = 0.0" in text and "KL coefficient." in text


def test_cli_help_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--help"]) == 0
    assert "grpo" in capsys.readouterr().out
    assert cli_main(["grop"]) == 2
    assert "Did you mean 'grpo'?" in capsys.readouterr().err
    assert cli_main(["grpo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "samples_per_prompt = 8" in out and "optim.lr" in out


def test_cli_config_error_is_one_block_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["grpo", "optim.lrr=1", "samples_per_prompt=1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'optim.lr'?" in err
    assert "samples_per_prompt must be >= 2" in err
    assert "Traceback" not in err


def test_cli_names_the_command_line_for_an_override_and_the_file_for_its_own_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  lr: 1.0e-5\nsamples_per_prompt: 1\n")
    assert cli_main(["grpo", "-c", str(path), "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "on the command line: 'optim.lr' must be > 0; got -1.0" in err
    assert f"in {path}: samples_per_prompt must be >= 2" in err


def test_overriding_one_key_keeps_the_recipes_own_section_defaults() -> None:
    from posttrain.recipes import sft

    config = load_config(sft.Config, None, ["optim.warmup_steps=1", "sampling.dtype=float32"])
    assert config.optim.warmup_steps == 1
    assert config.optim.lr == sft.Config().optim.lr == 5e-5  # SFT's default, not OptimConfig's
    assert config.sampling.max_new_tokens == sft.Config().sampling.max_new_tokens == 96


def test_cli_dispatches_collect_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["collect", "export", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path)]) == 2
    assert "no collection database here" in capsys.readouterr().err
    assert cli_main(["--help"]) == 0
    assert "collect sample | serve | export" in capsys.readouterr().out
