"""``posttrain <command> [-c config.yaml] [key.sub=value ...]``: parse, then call the recipe.

The CLI holds no training logic: each command is a module with a ``Config`` dataclass and a
``train(config)`` function, the same ones a notebook calls. Errors caused by the user (config,
data, rewards, checkpoints) print one block and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any

# Spinning OpenMP threads collapse throughput when another process shares the cores (measured:
# a tiny-model generate took 5-12 s instead of 0.2 s); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from posttrain.config import help_text, load_config
from posttrain.errors import PosttrainError

COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("posttrain.recipes.sft", "supervised fine-tuning on demonstrations (loss on responses only)"),
    "grpo": ("posttrain.recipes.grpo", "GRPO with programmable and verifiable rewards"),
    "rm": ("posttrain.recipes.reward_model", "reward model (Bradley-Terry) on preference pairs or rankings"),
    "score": ("posttrain.score", "score (prompt, response) rows with a trained reward model"),
    "dpo": ("posttrain.recipes.dpo", "direct preference optimization (DPO, IPO, hinge) on preference pairs"),
    "orpo": ("posttrain.recipes.orpo", "ORPO on preference pairs (SFT + odds ratio, no reference model)"),
    "kto": ("posttrain.recipes.kto", "KTO on thumbs up/down (unpaired) feedback"),
    "ppo": ("posttrain.recipes.ppo", "RLHF with PPO: policy, reference, reward model, critic (GAE)"),
    "best-of-n": ("posttrain.recipes.best_of_n", "best-of-N / rejection sampling into SFT data, then SFT"),
    "eval": ("posttrain.eval.command", "score a model or run on arithmetic, HumanEval or a file; --compare"),
    "contamination": ("posttrain.eval.contamination", "n-gram overlap of a training set with a benchmark"),
    "label": ("posttrain.collect.label", "sample candidates, label them by a scripted labeller through the "
                                         "labelling page's API, export preference pairs"),
    "pipeline": ("posttrain.recipes.pipeline", "stages (sft, grpo, best-of-n...) in one config, resumable"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines.append(f"  {'collect':<{width}}  human feedback: collect sample | serve | export (labelling page)")
    return ("usage: posttrain <command> [-c CONFIG.yaml] [key.sub=value ...] [--help]\n\n"
            "Post-training for language models.\n\ncommands:\n" + "\n".join(lines) +
            "\n\nExample: posttrain grpo -c configs/grpo-arithmetic.yaml run.steps=10\n"
            "`posttrain <command> --help` lists every option with its default.")


def _parser(command: str, module: Any = None) -> argparse.ArgumentParser:
    """The shared flags, plus the command's own when its module has ``add_arguments(parser)``."""
    parser = argparse.ArgumentParser(prog=f"posttrain {command}", add_help=False)
    parser.add_argument("-c", "--config", help="YAML config file")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last valid checkpoint")
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    add_arguments = getattr(module, "add_arguments", None)
    if add_arguments is not None:
        add_arguments(parser)
    return parser


def _resume_overrides(run_dir: str) -> list[str]:
    path = os.path.normpath(run_dir)
    return [f"run.output_dir={os.path.dirname(path) or '.'}", f"run.name={os.path.basename(path)}",
            "run.resume=true"]


def run_command(command: str, argv: list[str]) -> Any:
    module = importlib.import_module(COMMANDS[command][0])
    args = _parser(command, module).parse_args(argv)
    if args.help:
        print(f"usage: posttrain {command} [-c CONFIG.yaml] [--resume RUN_DIR] [key.sub=value ...]\n\n"
              f"{COMMANDS[command][1]}\n\n{(module.__doc__ or '').strip()}\n\noptions (key = default):\n"
              f"{help_text(module.Config).lstrip(chr(10))}")  # a section starts with a newline, a field not
        return None
    overrides = list(args.overrides)
    config_path = args.config
    if args.resume:
        saved = os.path.join(args.resume, "config.yaml")
        config_path = config_path or (saved if os.path.exists(saved) else None)
        overrides += _resume_overrides(args.resume)
    config = load_config(module.Config, config_path, overrides)
    # A command's own flags may ask for something else than train(config) (e.g. `eval --compare`);
    # its run_arguments(args, config) then returns the result, or None to train as usual.
    run_arguments = getattr(module, "run_arguments", None)
    result = run_arguments(args, config) if run_arguments is not None else None
    if result is not None:
        return result
    from posttrain import distributed  # with cluster.trainers > 1, the recipe runs on the trainer ranks

    return distributed.launch(module.train, config)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from posttrain import __version__

        print(f"posttrain {__version__}")
        return 0
    command = argv[0]
    if command == "collect":  # its own subcommands (sample | serve | export)
        from posttrain.collect import main as collect_main

        return collect_main(argv[1:])
    if command not in COMMANDS:
        import difflib

        guess = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        print(f"posttrain: unknown command '{command}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    try:
        result = run_command(command, argv[1:])
    except PosttrainError as error:
        print(f"posttrain {command}: error\n{error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"posttrain {command}: interrupted; resume with --resume <run dir>", file=sys.stderr)
        return 130
    if result is not None:
        print(f"posttrain {command}: done -> {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
