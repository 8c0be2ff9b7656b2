"""Pipelines, the planning half: stages checked and resolved, fingerprints, saved state.

``posttrain.recipes.pipeline`` runs what this module plans; its docstring describes the file format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.config import load_config, to_dict
from posttrain.errors import CheckpointError, ConfigError

RECIPES = ("sft", "grpo", "dpo", "rm", "best-of-n", "kto", "orpo", "ppo", "eval", "label")
# what a stage makes, relative to its run directory: a recipe module may define ``outputs(config)``
# (and RESUMABLE = False when a killed run cannot continue from its checkpoints); by default the
# final model, and nothing for an evaluation
DEFAULT_OUTPUTS = {"model": "final"}
NO_MODEL_RECIPES = {"eval": {}}
SCORERS = {"rm"}  # their model scores text; held-out evaluation by generation does not apply
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# keys the pipeline sets in each stage: a run section's, or an output folder's (eval)
_RUN_KEYS = ("output_dir", "name", "resume", "overwrite")
_OUTPUT_KEYS = ("output_dir", "name", "overwrite")



@dataclass
class Config:
    """The pipeline file (``-c``) itself; ``stages`` holds each recipe's own config."""

    name: str = ""
    """Pipeline directory name under output_dir (default: pipeline-<date>-<time>; set it to resume)."""
    output_dir: str = "runs"
    """Folder holding the pipeline directory."""
    stages: list[dict[str, Any]] = field(default_factory=list)
    """Ordered stages: {name, recipe, config} each; config is the recipe's YAML as a mapping."""
    evaluate: dict[str, Any] = field(default_factory=dict)
    """A ``posttrain eval`` config (benchmark, options, n, k, maj, sampling...) run on each stage's
    model; empty: no held-out evaluation between stages."""
    save_every: int = 10
    """Checkpoint interval of training stages that leave run.save_every unset (resume needs one)."""
    from_stage: str = ""
    """Rerun this stage and every stage after it (``--from``)."""
    only_stage: str = ""
    """Run this stage alone (``--only``); its inputs must be finished."""

    def check(self) -> list[str]:
        if not self.stages:
            return ["'stages' is empty: list at least one {name, recipe, config}"]
        return []


@dataclass
class Stage:
    """One stage, resolved: its recipe module, built config and what it reads and makes."""

    index: int
    name: str
    recipe: str
    module: Any
    config: Any  # the recipe's Config dataclass, references resolved
    raw: dict[str, Any]  # the stage's config mapping as written (references unresolved)
    outputs: dict[str, Path]  # output name -> planned path
    depends_on: list[str]

    @property
    def model(self) -> Path | None:
        return self.outputs.get("model")


def _recipe_module(recipe: str) -> Any:
    from posttrain.cli import COMMANDS

    return importlib.import_module(COMMANDS[recipe][0])


def _outputs(recipe: str, module: Any, config: Any, run_dir: Path) -> dict[str, Path]:
    declared = getattr(module, "outputs", None)
    relative = declared(config) if declared else NO_MODEL_RECIPES.get(recipe, DEFAULT_OUTPUTS)
    return {"run_dir": run_dir, **{key: run_dir / rel for key, rel in relative.items()}}


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, string) of every string inside a nested config value."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{key}[{i}]")


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(part)
        data = data[part]
    return data


def _resolve(value: Any, replace: Callable[[str], Any]) -> Any:
    """A config value with each ``${...}`` replaced; a string that is one reference takes its value."""
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value)
        if whole:
            return replace(whole.group(1))
        return _REFERENCE.sub(lambda m: str(replace(m.group(1))), value)
    if isinstance(value, dict):
        return {k: _resolve(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, replace) for v in value]
    return value


def has_run_section(module: Any) -> bool:
    return "run" in {f.name for f in dataclasses.fields(module.Config)}


def _pipeline_keys(module: Any, raw: dict[str, Any], where: str) -> list[str]:
    """Problems for keys a stage may not set: the pipeline places every stage's output."""
    if has_run_section(module):
        run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
        return [f"{where}.config.run.{key}: set by the pipeline (each stage runs in <pipeline dir>/<stage "
                f"name>); remove it" for key in _RUN_KEYS if key in run]
    return [f"{where}.config.{key}: set by the pipeline (the stage's output folder is <pipeline dir>/<stage "
            f"name>); remove it" for key in _OUTPUT_KEYS if key in raw]


def _placement(module: Any, raw: dict[str, Any], pipeline_dir: Path, name: str,
               save_every: int) -> dict[str, Any]:
    """The stage's output folder (and checkpoint interval) as dotted config values."""
    if has_run_section(module):
        values: dict[str, Any] = {"run.output_dir": str(pipeline_dir), "run.name": name}
        run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
        if "save_every" not in run:
            values["run.save_every"] = save_every
        if "keep_last" not in run:  # a stage's checkpoints only serve its own resume: one is enough
            values["run.keep_last"] = 1
        return values
    return {"output_dir": str(pipeline_dir), "name": name}




def plan(config: Config, pipeline_dir: Path) -> list[Stage]:
    """Check the whole pipeline and resolve every reference; one ConfigError lists every problem."""
    problems: list[str] = []
    stages: dict[str, Stage] = {}
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in config.stages]
    failed: set[str] = set()  # stages with problems: references to them add none of their own
    for index, entry in enumerate(config.stages):
        where = f"stages[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with name, recipe and config; got {entry!r}")
            continue
        unknown = sorted(set(entry) - {"name", "recipe", "config"})
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (a stage has: name, recipe, "
                            "config)")
        name, recipe, raw = entry.get("name"), entry.get("recipe"), entry.get("config") or {}
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in ("evals", "report"):
            problems.append(f"{where}.name: a name of letters, digits, _ and - (not evals or report) is "
                            f"required; got {name!r}")
            continue
        where = f"stage '{name}'"
        if name in stages or name in names[:index]:
            problems.append(f"{where}: the name is used twice")
            continue
        if recipe not in RECIPES:
            problems.append(f"{where}.recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
            continue
        if not isinstance(raw, dict):
            problems.append(f"{where}.config: expected a mapping (the recipe's YAML); "
                            f"got {type(raw).__name__}")
            continue
        module = _recipe_module(recipe)
        stage_problems = _pipeline_keys(module, raw, where)
        depends_on: set[str] = set()

        def replace(reference: str, where: str = where, index: int = index, depends_on: set[str] = depends_on,
                    stage_problems: list[str] = stage_problems) -> Any:
            value, problem = _reference_value(reference, stages, names[index:])
            if problem and _target(reference) in failed:
                return f"<{reference}>"  # that stage's own problems are reported already
            if problem:
                stage_problems.append(f"{where}: ${{{reference}}} {problem}")
                return f"<{reference}>"
            depends_on.add(_target(reference))
            return value

        resolved = _resolve(raw, replace)
        placement = _placement(module, raw, pipeline_dir, name, config.save_every)
        try:
            built = load_config(module.Config, values={**resolved, **placement})
        except ConfigError as error:
            stage_problems.extend(f"{where}.config: {p}" for p in error.problems)
        if stage_problems:
            problems.extend(stage_problems)
            failed.add(name)
            continue
        stages[name] = Stage(index, name, recipe, module, built, raw,
                             _outputs(recipe, module, built, pipeline_dir / name), sorted(depends_on))
    for flag, value in (("--from", config.from_stage), ("--only", config.only_stage)):
        if value and value not in names:
            problems.append(f"{flag} {value}: no stage of that name (stages: {', '.join(map(str, names))})")
    if config.from_stage and config.only_stage:
        problems.append("--from and --only: choose one")
    if config.evaluate:
        problems.extend(_check_evaluate(config.evaluate))
    if problems:
        raise ConfigError(problems)
    return list(stages.values())


def _target(reference: str) -> str:
    parts = reference.strip().split(".")
    return parts[1] if len(parts) > 1 else ""


def _reference_value(reference: str, earlier: dict[str, Stage], later: list[Any]) -> tuple[Any, str]:
    """(value, "") of ``stages.NAME.OUTPUT`` or ``stages.NAME.config.KEY``, or (None, the problem)."""
    parts = reference.strip().split(".")
    if len(parts) < 3 or parts[0] != "stages":
        return None, "is not of the form ${stages.NAME.OUTPUT} or ${stages.NAME.config.KEY}"
    target, output = parts[1], ".".join(parts[2:])
    if target not in earlier:
        if target in later:
            return None, f"refers to stage '{target}', which does not run before this one"
        return None, f"refers to an unknown stage '{target}' (earlier stages: {', '.join(earlier) or 'none'})"
    source = earlier[target]
    if output.startswith("config."):
        key = output[len("config."):]
        try:
            return _lookup(to_dict(source.config), key), ""
        except KeyError:
            return None, f"names no key of stage '{target}' ({source.recipe}): it has no config key {key!r}"
    if output not in source.outputs:
        return None, (f"names no output of stage '{target}' ({source.recipe}), which makes "
                      f"{', '.join(sorted(source.outputs))}")
    return str(source.outputs[output]), ""


def _check_evaluate(values: dict[str, Any]) -> list[str]:
    from posttrain.eval.command import Config as EvalConfig

    problems = [f"evaluate.{key}: set by the pipeline (each stage's model and output folder); remove it"
                for key in ("model", "output_dir", "name", "overwrite") if key in values]
    try:
        load_config(EvalConfig, values=values)
    except ConfigError as error:
        problems.extend(f"evaluate: {p}" for p in error.problems)
    return problems


# ----------------------------------------------------------------------------- fingerprints and state

# run keys that change how a run is logged or checkpointed, never what it computes
_BOOKKEEPING = {"resume", "overwrite", "progress", "save_every", "keep_last", "log_every", "tensorboard",
                "eval_every"}


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def input_files(stage: Stage) -> dict[str, str]:
    """Digests of the files a stage's config names (data files, reward files), by path."""
    files = {}
    for _, text in _walk(to_dict(stage.config)):
        path = Path(text.split(":")[0]) if text.endswith(".py") or ".py:" in text else Path(text)
        if _is_file(path):
            files[str(path)] = _file_digest(path)
    return files


def _is_file(path: Path) -> bool:
    """Whether a config string names a file; prose (a system prompt) can be too long to be a path."""
    try:
        return path.is_file()
    except OSError:  # e.g. ENAMETOOLONG
        return False


def fingerprint(stage: Stage, previous: dict[str, Any] | None) -> str:
    """What the stage computes from: its recipe, config, input files and the stage run just before it
    (its fingerprint and when it finished, so a rerun of that stage invalidates this one)."""
    config = to_dict(stage.config)
    if isinstance(config.get("run"), dict):
        # with run.keep_best the evaluation schedule decides which weights final/ holds
        ignored = _BOOKKEEPING - {"eval_every"} if config["run"].get("keep_best") else _BOOKKEEPING
        config["run"] = {k: v for k, v in config["run"].items() if k not in ignored}
    chain = {k: previous.get(k) for k in ("fingerprint", "finished")} if previous else None
    return digest({"recipe": stage.recipe, "config": config, "files": input_files(stage), "previous": chain})


class State:
    """``state.json``: per stage its fingerprint, status (running or done), times and outputs;
    rewritten atomically after every change, so a kill at any moment leaves a readable file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                self.stages = json.loads(path.read_text()).get("stages", {})
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}: unreadable pipeline state ({error}); delete it to rerun every "
                                  "stage") from None

    def get(self, name: str) -> dict[str, Any] | None:
        return self.stages.get(name)

    def put(self, name: str, **values: Any) -> dict[str, Any]:
        record = {**self.stages.get(name, {}), **values}
        self.stages[name] = record
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=1) + "\n")
        os.replace(tmp, self.path)
        return record


def _has_checkpoint(run_dir: Path) -> bool:
    from posttrain.checkpoint import find_resume_checkpoint

    try:
        find_resume_checkpoint(run_dir)
    except CheckpointError:
        return False
    return True


def decide(stage: Stage, record: dict[str, Any] | None, fp: str, forced: bool) -> str:
    """skip (finished, unchanged), resume (killed midway, unchanged, has a checkpoint) or run."""
    if forced or record is None or record.get("fingerprint") != fp:
        return "run"
    if record.get("status") == "done" and all(Path(p).exists() for p in record.get("outputs", {}).values()):
        return "skip"
    resumable = has_run_section(stage.module) and getattr(stage.module, "RESUMABLE", True)
    if record.get("status") == "running" and resumable and _has_checkpoint(stage.outputs["run_dir"]):
        return "resume"
    return "run"
