"""``posttrain pipeline -c file.yaml``: several recipes chained in one config, resumed like a build.

A pipeline is an ordered list of named stages, each a recipe (``sft``, ``grpo``, ``dpo``, ``rm``,
``best-of-n``, ``kto``, ``orpo``, ``ppo``, ``eval``, or ``label``: candidates sampled and labelled by
a scripted labeller through the labelling page, see ``posttrain.collect.label``) with its own config
section, written exactly as that recipe's YAML file. A value may name an earlier stage's output:

    stages:
      - name: cold_start
        recipe: sft
        config: {model: {name: smollm2-135m-instruct}, data: {train: arithmetic}}
      - name: reasoning
        recipe: grpo
        config: {model: {name: "${stages.cold_start.model}"}}

References: ``${stages.NAME.model}`` (the stage's ``final/`` HF folder: its best weights when the
stage sets ``run.keep_best``, its last step's otherwise), ``${stages.NAME.dataset}`` (best-of-n's SFT
data, label's pairs), ``${stages.NAME.held_out}`` (label's held-out pairs), ``${stages.NAME.run_dir}``,
and ``${stages.NAME.config.KEY.SUB}`` (any value of an earlier stage's resolved config, e.g.
``${stages.cold_start.config.model.name}``: the model it started from). The whole file is checked
before anything runs: an unknown recipe or stage, a reference to a later stage, an output the stage
does not make, and every stage's own config errors, each naming the stage and key.

Runs like a build system: every stage records a fingerprint of its resolved config, of the data files
it reads and of the stage before it (so editing one stage reruns it and every stage after it, nothing
before it). Running the same file again skips finished stages whose fingerprint is unchanged,
resumes a stage that was killed midway from its last checkpoint (``save_every`` sets how often the
pipeline's training stages checkpoint, unless a stage sets ``run.save_every``; each keeps its last
checkpoint only, unless it sets ``run.keep_last``), and starts the
others afresh. ``--from STAGE`` reruns from that stage on; ``--only STAGE`` runs that stage alone
(its inputs must be finished).

After each stage that produces a policy (and for the first stage's input model), the ``evaluate``
section (a ``posttrain eval`` config without ``model``) runs on the held-out set; at the end a table
of stage x metric is printed and written with a chart per metric (``report/``), and the response
length of every RL stage is drawn along the whole pipeline (``report/response_length.png``, the
curve DeepSeek-R1 reports).

The pipeline's directory ``<output_dir>/<name>/`` holds ``pipeline.yaml`` (the file as run),
``state.json`` (fingerprints and outputs), one run directory per stage, ``evals/`` and ``report/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from posttrain.config import load_config, to_dict
from posttrain.errors import ConfigError
from posttrain.keep_best import read_record, sentence
from posttrain.pipelines import (
    SCORERS,
    Config,
    Stage,
    State,
    decide,
    digest,
    fingerprint,
    has_run_section,
    plan,
)

__all__ = ["Config", "plan", "train"]


# ----------------------------------------------------------------------------- running


def run_stage(stage: Stage, action: str) -> None:
    """Train (or evaluate) one stage: afresh, replacing what a previous attempt left, or resumed."""
    if has_run_section(stage.module):
        flags = {"resume": True} if action == "resume" else {"overwrite": True}
        config = dataclasses.replace(stage.config, run=dataclasses.replace(stage.config.run, **flags))
    else:
        config = dataclasses.replace(stage.config, overwrite=True)
    stage.module.train(config)


def evaluate_model(config: Config, pipeline_dir: Path, label: str, model: str, state: State,
                   key: str) -> Path | None:
    """The pipeline's ``evaluate`` section on one model, into evals/<label>; skipped when done with
    the same model and settings (``key`` identifies the model's version)."""
    from posttrain.eval.command import Config as EvalConfig
    from posttrain.eval.command import run as run_eval

    if not config.evaluate:
        return None
    out_dir = pipeline_dir / "evals" / label
    fp = digest({"evaluate": config.evaluate, "model": key})
    record = state.get(f"eval:{label}")
    if record and record.get("fingerprint") == fp and (out_dir / "summary.json").is_file():
        print(f"[pipeline] evaluation of {label}: unchanged, kept ({out_dir})")
        return out_dir
    eval_config = load_config(EvalConfig, values={**config.evaluate, "model": model,
                                                  "output_dir": str(pipeline_dir / "evals"), "name": label,
                                                  "overwrite": True})
    print(f"[pipeline] evaluating {label}: {model}")
    run_eval(eval_config)
    state.put(f"eval:{label}", fingerprint=fp, dir=str(out_dir))
    return out_dir


def _start_model(stages: list[Stage]) -> str | None:
    model = getattr(stages[0].config, "model", None)
    name = getattr(model, "name", model)
    return name if isinstance(name, str) else None


def pipeline_dir_of(config: Config) -> Path:
    name = config.name or f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ConfigError(f"name {name!r} must be a relative name without '..' components")
    return Path(config.output_dir) / name


def _why_run(record: dict[str, Any] | None, fp: str, forced: bool) -> str:
    if forced:
        return "forced rerun"
    if record is None:
        return "running"
    if record.get("fingerprint") != fp:
        return "config or inputs changed, rerunning"
    if record.get("status") == "running":
        return "stopped before a checkpoint it can resume from, starting again"
    return "outputs missing, rerunning"


def train(config: Config) -> Path:
    """Run the pipeline's stages in order (skipping, resuming or rerunning each); return its directory."""
    pipeline_dir = pipeline_dir_of(config)
    stages = plan(config, pipeline_dir)
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    (pipeline_dir / "pipeline.json").write_text(json.dumps(to_dict(config), indent=1) + "\n")
    state = State(pipeline_dir / "state.json")
    only = next((s for s in stages if s.name == config.only_stage), None)
    start_from = next((s.index for s in stages if s.name == config.from_stage), None)
    evals: list[Path | None] = []
    start = _start_model(stages)
    if start is not None and only is None:
        evals.append(evaluate_model(config, pipeline_dir, "start", start, state, start))
    previous: dict[str, Any] | None = None
    for stage in stages:
        record = state.get(stage.name)
        if only is not None and stage is not only:
            if stage.name in only.depends_on and (record is None or record.get("status") != "done"):
                raise ConfigError(f"--only {only.name}: it reads stage '{stage.name}', which has not "
                                  f"finished; run the pipeline without --only first")
            previous = record
            continue
        fp = fingerprint(stage, previous)
        forced = stage is only or (start_from is not None and stage.index >= start_from)
        action = decide(stage, record, fp, forced)
        what = {"skip": "unchanged, skipped", "resume": "resuming from its last checkpoint",
                "run": _why_run(record, fp, forced)}[action]
        print(f"[pipeline] stage {stage.index + 1}/{len(stages)} '{stage.name}' ({stage.recipe}): {what}",
              flush=True)
        if action != "skip":
            started = time.time()
            state.put(stage.name, fingerprint=fp, status="running", started=started)
            run_stage(stage, action)
            finished = time.time()
            record = state.put(stage.name, status="done", finished=finished,
                               seconds=round(finished - started, 1),
                               outputs={k: str(v) for k, v in stage.outputs.items()},
                               kept=read_record(stage.outputs["run_dir"]))
        if record is not None and record.get("kept"):  # run.keep_best: what the next stage gets
            print(f"[pipeline] stage '{stage.name}': {sentence(record['kept'])}", flush=True)
        previous = record
        if stage.model is not None and stage.recipe not in SCORERS:
            assert record is not None
            evals.append(evaluate_model(config, pipeline_dir, stage.name, str(stage.model), state,
                                        f"{record['fingerprint']}@{record['finished']}"))
        elif stage.recipe == "eval":
            evals.append(stage.outputs["run_dir"])
    write_report(pipeline_dir, [e for e in evals if e is not None], stages)
    print(f"[pipeline] done -> {pipeline_dir}")
    return pipeline_dir


# ----------------------------------------------------------------------------- report


def write_report(pipeline_dir: Path, eval_dirs: list[Path], stages: list[Stage]) -> Path | None:
    """Stage x metric table with a chart per metric (eval's compare), and the response-length curve."""
    from posttrain.eval.compare import compare

    report_dir = pipeline_dir / "report"
    if eval_dirs:
        print("[pipeline] held-out evaluation after each stage:")
        compare([str(d) for d in eval_dirs], output_dir=str(pipeline_dir), name="report", overwrite=True)
    report_dir.mkdir(exist_ok=True)
    response_length_chart(report_dir / "response_length.png", stages)
    return report_dir


RL_RECIPES = ("grpo", "ppo")


def response_lengths(stages: list[Stage]) -> list[tuple[str, list[int], list[float]]]:
    """(stage, steps, mean completion length) of each RL stage that has run; sampling stages such
    as best-of-n log a completion length too, but they take no RL steps."""
    from posttrain.tracking import read_metrics

    curves = []
    for stage in stages:
        if stage.recipe in RL_RECIPES and (stage.outputs["run_dir"] / "metrics.jsonl").is_file():
            rows = [r for r in read_metrics(stage.outputs["run_dir"]) if "rollout/completion_len" in r]
            if rows:
                lengths = [r["rollout/completion_len"] for r in rows]
                curves.append((stage.name, [r["step"] for r in rows], lengths))
    return curves


def response_length_chart(path: Path, stages: list[Stage]) -> Path | None:
    """Mean completion length per RL step, stage after stage on one axis (R1's figure 3)."""
    curves = response_lengths(stages)
    if not curves:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.6), layout="constrained")
    axes = figure.add_subplot()
    offset = 0
    for name, steps, lengths in curves:
        axes.plot([offset + s for s in steps], lengths, label=name)
        offset += max(steps)
        axes.axvline(offset, color="grey", alpha=0.3)
    axes.set_xlabel("RL step (stages one after another)")
    axes.set_ylabel("mean response length (tokens)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.savefig(path, format="png", dpi=100)
    return path


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun from this stage on")
    parser.add_argument("--only", dest="only_stage", metavar="STAGE", help="run this stage alone")


def run_arguments(args: argparse.Namespace, config: Config) -> Path:
    """``--from`` / ``--only``, and the pipeline's name from its file (so running it again resumes it)."""
    changes: dict[str, Any] = {}
    if args.from_stage:
        changes["from_stage"] = args.from_stage
    if args.only_stage:
        changes["only_stage"] = args.only_stage
    if not config.name:
        changes["name"] = Path(args.config).stem if args.config else "pipeline"
    return train(dataclasses.replace(config, **changes))

