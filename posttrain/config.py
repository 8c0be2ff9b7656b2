"""Typed configs: dataclass sections shared by every recipe, YAML files and dotted overrides.

A recipe's ``Config`` is a dataclass whose fields are either plain values or sections
(``model``, ``data``, ``optim``, ``run``, ``sampling``). The string literal written under a field
is its documentation: ``posttrain <command> --help`` prints it with the default.

``load_config(GRPOConfig, "configs/grpo.yaml", ["optim.lr=1e-5", "run.steps=20"])`` merges the
file and the overrides, rejects unknown keys with the nearest valid key, converts types, checks
ranges, and reports every problem in one ``ConfigError``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from posttrain.errors import COMMAND_LINE, ConfigError, config_source

C = TypeVar("C")


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Model to train: 'smollm2-135m-instruct' (embedded), an HF folder, a .gguf file or a hub name."""
    dtype: str = "float32"
    """Weights' dtype: float32 (with optional bf16 autocast, see `autocast`) or bfloat16."""
    autocast: str = "bfloat16"
    """Autocast dtype for forward/backward passes: bfloat16, or none for full fp32 compute."""
    device: str = "auto"
    """Device: auto (CUDA when present), cpu, or cuda."""
    lora_rank: int = 0
    """LoRA rank; 0 trains every weight."""
    lora_alpha: float = 32.0
    """LoRA scaling alpha."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_targets: str = "all-linear"
    """Modules that get adapters: 'all-linear' or a comma-separated list (q_proj,v_proj)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


@dataclass
class DataConfig:
    train: str = "arithmetic"
    """Training data: a procedural task (arithmetic) or a file (.jsonl, .json, .csv, .parquet)."""
    eval: str = ""
    """Held-out data: a task or a file; empty uses the training task's test split."""
    task: str = ""
    """Task whose check() judges answers of file data (default: the task named in `train`)."""
    train_size: int = 5000
    """Rows drawn from a procedural task's train split."""
    eval_size: int = 100
    """Held-out rows evaluated (a procedural task's test split, or the first rows of a file)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of a procedural task, e.g. {style: tags, digits: 2, ops: [+]}."""
    system_prompt: str = ""
    """System message prepended to every prompt (empty: the chat template's default)."""
    max_prompt_tokens: int = 256
    """Longer prompts are an error naming the row."""
    mix: list[dict[str, Any]] = field(default_factory=list)
    """Other sources mixed into the training rows, each making up `fraction` of the final training set
    (the rest is `train`), e.g. [{train: instructions, fraction: 0.25, options: {}}]; `train` is a task
    or a file as above (a task gives the rows needed, a file's rows are drawn, repeated if too few)."""

    def check(self) -> list[str]:
        problems, total = [], 0.0
        for i, entry in enumerate(self.mix):
            where = f"mix[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where}: expected a mapping with keys {', '.join(MIX_KEYS)}; got {entry!r}")
                continue
            for key in entry:
                if key not in MIX_KEYS:
                    close = difflib.get_close_matches(str(key), MIX_KEYS, n=1)
                    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(MIX_KEYS)}"
                    problems.append(f"{where}.{key}: unknown key; {hint}")
            train, fraction, options = entry.get("train"), entry.get("fraction"), entry.get("options", {})
            if not isinstance(train, str) or not train.strip():
                problems.append(f"{where}.train: must name a task or a file; got {train!r}")
            if isinstance(fraction, int | float) and not isinstance(fraction, bool) and 0 < fraction < 1:
                total += fraction
            else:
                problems.append(f"{where}.fraction: must be a number in (0, 1); got {fraction!r}")
            if options is not None and not isinstance(options, dict):
                problems.append(f"{where}.options: expected a mapping of task options; got {options!r}")
        if total >= 1:
            problems.append(f"mix: fractions sum to {total:g}; they must sum to less than 1 "
                            "(the rest is `train`)")
        return problems


MIX_KEYS = ("train", "fraction", "options")


@dataclass
class OptimConfig:
    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    schedule: str = "constant"
    """Learning-rate schedule after warm-up: constant, linear or cosine (to zero)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this value; 0 disables clipping."""
    max_bad_steps: int = 5
    """Abort after this many consecutive steps with a non-finite loss or gradient."""


@dataclass
class RunConfig:
    output_dir: str = "runs"
    """Folder holding run directories."""
    name: str = ""
    """Run name (default: <command>-<date>-<time>)."""
    steps: int = 100
    """Optimizer steps to train."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    save_every: int = 0
    """Save a checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    log_every: int = 1
    """Log metrics every N steps."""
    eval_every: int = 0
    """Held-out evaluation every N steps (0: only before and after)."""
    keep_best: str = ""
    """A held-out metric (e.g. eval/accuracy): final/ holds the weights of the evaluation that scored best
    on it, not the last step's; empty: the last step's."""
    keep_best_mode: str = "auto"
    """Which way keep_best is better: max, min, or auto (from its name: accuracy, reward: max; loss: min)."""
    resume: bool = False
    """Continue the run in run.output_dir/run.name from its last valid checkpoint."""
    overwrite: bool = False
    """Replace an existing run directory of the same name."""
    tensorboard: bool = False
    """Also write TensorBoard event files."""
    progress: bool = True
    """Show a progress bar (a plain log line every few steps when not on a terminal)."""
    stop_on: list[str] = field(default_factory=list)
    """Run-health alarms that stop the run when they fire, checkpoint kept (RL recipes: grpo, ppo,
    best-of-n): no_signal, reward_hacking, entropy_collapse, length, kl_runaway, nonfinite, or all."""

    def check(self) -> list[str]:
        return [f"stop_on: unknown alarm {name!r}; choose from {', '.join(ALARMS)} or all"
                for name in self.stop_on if name not in (*ALARMS, "all")]


ALARMS = ("no_signal", "reward_hacking", "entropy_collapse", "length", "kl_runaway", "nonfinite")


@dataclass
class HealthConfig:
    """Thresholds of the run-health alarms (posttrain.health), checked after every RL step."""

    off: list[str] = field(default_factory=list)
    """Alarms not checked (names as in run.stop_on)."""
    steps: int = 3
    """Steps in a row a condition must hold before no_signal, entropy_collapse, length or kl_runaway fire."""
    no_signal_frac: float = 0.9
    """no_signal: share of prompt groups whose rewards are all equal (rollout/frac_zero_std_groups)."""
    guard: str = "eval/accuracy"
    """reward_hacking: the held-out measure, a share in [0, 1] (eval/accuracy: the task's check() on
    held-out prompts; or e.g. rollout/reward/task_correct, a reward function given weight 0)."""
    guard_z: float = 2.0
    """reward_hacking: standard errors by which the guard must fall (binomial, from its first value)
    and the training reward must rise (first steps vs the latest ones)."""
    reward_window: int = 5
    """reward_hacking: steps averaged at each end of the training reward's rise."""
    entropy_ratio: float = 0.1
    """entropy_collapse: policy/entropy below this fraction of its mean over the first 3 steps."""
    length_growth: float = 4.0
    """length: mean completion length above this multiple of its mean over the first 3 steps."""
    truncation_frac: float = 0.5
    """length: share of samples cut at max_new_tokens (rollout/clipped_ratio) at or above this."""
    kl_max: float = 1.0
    """kl_runaway: KL to the reference per token, nats (GRPO's policy/kl, PPO's policy/kl_per_token)."""
    nonfinite_steps: int = 2
    """nonfinite: steps in a row with an optimizer step skipped for a non-finite loss or gradient."""

    def check(self) -> list[str]:
        problems = [f"off: unknown alarm {name!r}; choose from {', '.join(ALARMS)}"
                    for name in self.off if name not in ALARMS]
        for key in ("nonfinite_steps", "reward_window"):  # `steps` is checked by name like every steps
            if getattr(self, key) < 1:
                problems.append(f"'{key}' must be >= 1; got {getattr(self, key)}")
        for key in ("no_signal_frac", "entropy_ratio", "truncation_frac"):
            if not 0 < getattr(self, key) <= 1:
                problems.append(f"'{key}' must be in (0, 1]; got {getattr(self, key)}")
        for key in ("guard_z", "length_growth", "kl_max"):
            if getattr(self, key) <= 0:
                problems.append(f"'{key}' must be > 0; got {getattr(self, key)}")
        return problems


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    max_new_tokens: int = 128
    """Most tokens generated per completion."""
    backend: str = "torch"
    """Rollout engine: torch, or vllm (GPU, optional extra)."""
    dtype: str = "float32"
    """Rollout weights: float32 samples the model itself (log-probs equal a re-scoring); bfloat16 an
    engine-owned bf16 copy of an fp32 model (faster; it follows every optimizer step by itself)."""


@dataclass
class ClusterConfig:
    address: str = ""
    """Where the run's roles live: empty = this process only (Ray is not imported); local = start a Ray
    cluster on this machine for the run and stop it after; auto, host:port or ray://host:port = join a
    running cluster (`ray start --head` on one machine, `ray start --address HOST:PORT` on the others)."""
    trainers: int = 1
    """Data-parallel trainer ranks (Ray actors in one torch.distributed group, each running the recipe on
    its share of every batch; rank 0 writes the run); 1 trains in this process."""
    sharding: str = "ddp"
    """How trainer ranks share the model: ddp (a full copy each, gradients summed once per optimizer
    step) or fsdp (torch's fully_shard: parameters, gradients and optimizer state sharded over the ranks,
    each decoder layer gathered while it runs; full-weight causal LMs, checkpoints through
    torch.distributed.checkpoint)."""
    rollout_workers: int = 0
    """Ray actors each holding a copy of the policy and a rollout engine, the prompts split across them
    and the weights pushed after each optimizer step (0: sample in this process)."""
    reward_workers: int = 0
    """Ray actors running the reward functions and the code sandbox, the batch split across them
    (0: score in this process)."""
    max_staleness: int = 0
    """Versions rollouts may lag the policy (rollout workers): 1 samples step k+1 while step k trains."""
    trainer_cpus: float = 1.0
    """CPUs each trainer rank asks the cluster for."""
    trainer_gpus: float = 0.0
    """GPUs each trainer rank asks the cluster for."""
    rollout_cpus: float = 1.0
    """CPUs each rollout worker asks the cluster for."""
    rollout_gpus: float = 0.0
    """GPUs each rollout worker asks the cluster for."""
    reward_cpus: float = 1.0
    """CPUs each reward worker asks for; it runs that many sandboxed programs at a time."""
    reward_gpus: float = 0.0
    """GPUs each reward worker asks for (a reward model on GPU)."""
    placement_timeout_s: float = 10.0
    """Seconds to wait for the cluster to place every role before failing with what was asked and
    what the cluster has (raise it for a cluster that adds nodes on demand)."""

    def check(self) -> list[str]:
        problems = []
        if self.sharding not in SHARDINGS:
            problems.append(f"sharding: must be one of {', '.join(SHARDINGS)}; got {self.sharding!r}")
        if self.trainers < 1:
            problems.append(f"trainers: must be >= 1; got {self.trainers}")
        for key in ("rollout_workers", "reward_workers", "trainer_cpus", "trainer_gpus", "rollout_cpus",
                    "rollout_gpus", "reward_cpus", "reward_gpus", "max_staleness"):
            if getattr(self, key) < 0:
                problems.append(f"{key}: must be >= 0; got {getattr(self, key)}")
        for role in ("trainer", "rollout", "reward"):
            if getattr(self, f"{role}_cpus") == 0 and getattr(self, f"{role}_gpus") == 0:
                problems.append(f"{role}_cpus and {role}_gpus are both 0: a {role} role must ask for a CPU "
                                "or a GPU")
        if self.placement_timeout_s <= 0:
            problems.append(f"placement_timeout_s: must be > 0; got {self.placement_timeout_s}")
        address = self.address.strip()
        if address and address not in ("local", "auto") and not _is_host_port(address.removeprefix("ray://")):
            problems.append(f"address: expected empty, local, auto, host:port or ray://host:port; "
                            f"got {self.address!r}")
        wanted = [f"{key}={getattr(self, key)}" for key in ("rollout_workers", "reward_workers")
                  if getattr(self, key) > 0] + ([f"trainers={self.trainers}"] if self.trainers > 1 else [])
        if wanted and not address:
            problems.append(f"{', '.join(wanted)} needs a Ray cluster: set cluster.address to local (start "
                            "one on this machine), auto or ray://host:port (join a running one)")
        if self.trainers > 1 and self.sharding == "fsdp" and self.rollout_workers > 0:
            problems.append(f"sharding=fsdp with rollout_workers={self.rollout_workers}: not implemented "
                            "yet; rank 0 pushes the weights it holds, and with fsdp it holds a shard (use "
                            "cluster.sharding=ddp, or cluster.rollout_workers=0)")
        if self.trainers > 1 and self.max_staleness > 0:
            problems.append(f"max_staleness={self.max_staleness} with trainers={self.trainers}: not "
                            "implemented yet; sampling ahead runs with one trainer (set "
                            "cluster.max_staleness=0, or cluster.trainers=1)")
        return problems


SHARDINGS = ("ddp", "fsdp")


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536

# ----------------------------------------------------------------------------- documentation


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal written under each field of a dataclass (its own, not inherited)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, [*body[1:], None]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def help_text(cls: type, prefix: str = "") -> str:
    """Every field as ``key = default  description``, sections indented under their name."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            lines += [f"\n{prefix}{f.name}:", help_text(tp, prefix + f.name + ".")]
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        lines.append(f"  {prefix}{f.name} = {default!r}\n      {docs.get(f.name, '')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- conversion


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type; raise ValueError with a reason."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if errors else f"{value!r} does not fit {tp}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        items = [_convert(v, item_tp, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ValueError(f"expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=1e-5)",
                          source=COMMAND_LINE)
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _build(cls: type, data: dict[str, Any], path: str, problems: list[str], base: Any = None) -> Any:
    """``cls`` from ``data``; keys it does not set keep ``base``'s values (a recipe's own section
    defaults, e.g. SFT's learning rate), else the class defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}{key}"
        if key not in hints or key not in names:
            guess = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean '{path}{guess[0]}'?" if guess else f"; valid keys: {', '.join(names)}"
            problems.append(f"unknown key '{full}'{hint}")
            continue
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, dict):
                problems.append(f"'{full}' is a section: expected a mapping of its keys, got {value!r}")
                continue
            own = fields[key].default_factory
            section_base = getattr(base, key) if base is not None else (
                own() if own is not dataclasses.MISSING else None)
            kwargs[key] = _build(tp, value, full + ".", problems, section_base)
            continue
        try:
            kwargs[key] = _convert(value, tp, full)
        except ValueError as error:
            problems.append(f"'{full}': {error}")
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in kwargs and required:
            problems.append(f"missing required key '{path}{f.name}'")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except TypeError as error:
        problems.append(f"{path or 'config'}: {error}")
        return None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


_PROBLEM_KEY = re.compile(r"^(?:unknown key |missing required key )?'?([A-Za-z_][\w.\[\]]*)")


def _from_overrides(problem: str, keys: list[str]) -> bool:
    """Whether ``problem`` is about a key an override set: the key it starts with (or names as unknown
    or missing) is one of ``keys`` or lies inside one (an override can set a whole section or list)."""
    match = _PROBLEM_KEY.match(problem)
    key = match.group(1) if match else ""
    return any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in keys)


def _raise_problems(problems: list[str], path: str | Path | None, override_keys: list[str]) -> None:
    """One ConfigError naming where each problem came from: the YAML file or the command line."""
    if not problems:
        return
    sources = [COMMAND_LINE if _from_overrides(p, override_keys) or not path else str(path) for p in problems]
    if not override_keys:  # a file alone (or values given in Python): no need to tell sources apart
        raise ConfigError(problems, source=str(path) if path else None)
    if len(set(sources)) == 1:
        raise ConfigError(problems, source=sources[0])
    raise ConfigError([f"{config_source(source)}: {p}" for p, source in zip(problems, sources)])


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> C:
    """Build ``cls`` from a YAML file, then a dict of values, then ``key.sub=value`` overrides (the
    command line). Every problem is reported in one ConfigError saying where it came from: the YAML
    file, or the command line for a problem with a key an override set."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    for key, value in (values or {}).items():
        _set_dotted(data, key, value)
    override_keys = []
    for text in overrides or []:
        key, value = _parse_override(text)
        _set_dotted(data, key, value)
        override_keys.append(key)
    problems: list[str] = []
    config = _build(cls, data, "", problems)
    if config is not None:
        problems.extend(validate(config))
    _raise_problems(problems, path, override_keys)
    return config


# ----------------------------------------------------------------------------- validation

_CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("float32", "bfloat16", "float16"),
    "autocast": ("bfloat16", "float16", "none"),
    "schedule": ("constant", "linear", "cosine"),
    "backend": ("torch", "vllm"),
}
_POSITIVE = {"lr", "steps", "max_new_tokens", "prompts_per_step", "micro_batch_size", "ppo_epochs",
             "batch_size", "keep_last", "log_every", "max_length", "epochs"}
_NON_NEGATIVE = {"beta", "weight_decay", "warmup_steps", "max_grad_norm", "save_every", "eval_every",
                 "top_k", "lora_rank", "lora_dropout", "clip_eps_low", "clip_eps_high", "label_smoothing"}


def validate(config: Any, path: str = "") -> list[str]:
    """Range and choice checks by field name, then the config's own ``check()`` if it has one."""
    problems: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{path}{f.name}"
        if dataclasses.is_dataclass(value):
            problems.extend(validate(value, key + "."))
            continue
        if f.name in _CHOICES and value not in _CHOICES[f.name]:
            problems.append(f"'{key}' must be one of {', '.join(_CHOICES[f.name])}; got {value!r}")
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if is_number and f.name in _POSITIVE and value <= 0:
            problems.append(f"'{key}' must be > 0; got {value}")
        if is_number and f.name in _NON_NEGATIVE and value < 0:
            problems.append(f"'{key}' must be >= 0; got {value}")
        if f.name == "temperature" and is_number and value < 0:
            problems.append(f"'{key}' must be >= 0 (0 is greedy); got {value}")
        if f.name == "top_p" and is_number and not 0 < value <= 1:
            problems.append(f"'{key}' must be in (0, 1]; got {value}")
    check = getattr(config, "check", None)
    if callable(check):
        problems.extend(f"{path}{p}" if path else p for p in check())
    if not path:  # run.keep_best is checked against what the whole recipe's evaluation logs
        from posttrain.keep_best import keep_best_problems

        problems.extend(keep_best_problems(config))
    run = getattr(config, "run", None)
    if not path and isinstance(run, RunConfig) and run.stop_on and not hasattr(config, "health"):
        problems.append("run.stop_on: this command has no run-health alarms (grpo, ppo and best-of-n have); "
                        "drop run.stop_on")
    health = getattr(config, "health", None)
    if not path and isinstance(run, RunConfig) and isinstance(health, HealthConfig):
        problems += [f"run.stop_on names {name}, which health.off turns off: drop it from one of them"
                     for name in run.stop_on if name in health.off]
    return problems


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (for config.yaml in the run directory and checkpoint fingerprints)."""
    return dataclasses.asdict(config)


__all__ = [
    "ALARMS", "ClusterConfig", "DataConfig", "HealthConfig", "ModelConfig", "OptimConfig", "RunConfig",
    "SamplingConfig", "field_docs", "help_text", "load_config", "read_yaml", "to_dict", "validate",
]
