"""The command line of preference collection: ``python -m posttrain.collect`` / ``posttrain collect``.

  sample -c sample.yaml [key=value ...]   prompts -> candidates -> collection.db (see sample.py)
  serve  --db collection.db [--mode rank|ab|thumbs] [--k 2] [--host 127.0.0.1] [--port 8600] [--token T]
  export --db collection.db --out DIR [--pairs all|adjacent]
"""

from __future__ import annotations

import argparse
import os
import sys

from posttrain.collect.db import DEFAULT_LEASE_S, MODES
from posttrain.errors import PosttrainError

TOKEN_ENV = "POSTTRAIN_COLLECT_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain collect",
                                     description="Collect human feedback: sample candidates, label them "
                                                 "in a web page, export training data.")
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="sample n candidates per prompt into a collection database")
    sample.add_argument("-c", "--config", help="YAML file with the sample options")
    sample.add_argument("overrides", nargs="*", help="key=value options (prompts=..., db=..., n=4, ...)")
    sample.add_argument("--options", action="store_true", help="list every sample option with its default")
    serve = commands.add_parser("serve", help="serve the labelling page and its JSON API")
    serve.add_argument("--db", default="collection.db", help="collection database (default collection.db)")
    serve.add_argument("--mode", choices=MODES, help="switch the database's labelling mode")
    serve.add_argument("--k", type=int, default=1, help="annotators per item (default 1)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8600, help="port (default 8600)")
    serve.add_argument("--token", default=None,
                       help=f"access token every request must carry (or set ${TOKEN_ENV}); "
                            "required to bind a non-loopback address")
    serve.add_argument("--lease", type=float, default=DEFAULT_LEASE_S,
                       help="seconds an unanswered item stays reserved for its annotator")
    export = commands.add_parser("export", help="write rankings/pairs/unpaired JSONL and summary.json")
    export.add_argument("--db", default="collection.db", help="collection database (default collection.db)")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--pairs", choices=("all", "adjacent"), default="all",
                        help="pairs implied by a ranking: all of them or adjacent ones (default all)")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "sample":
        from posttrain.collect.sample import SampleConfig, sample
        from posttrain.config import help_text, load_config

        if args.options:
            print(help_text(SampleConfig).lstrip("\n"))
            return
        result = sample(load_config(SampleConfig, args.config, args.overrides))
        print(f"posttrain collect sample: {result['new']} prompts added, {result['skipped']} skipped")
    elif args.command == "serve":
        from posttrain.collect.server import serve

        serve(args.db, host=args.host, port=args.port, token=args.token or os.environ.get(TOKEN_ENV) or None,
              k=args.k, mode=args.mode, lease_s=args.lease)
    else:
        from posttrain.collect.export import export, format_summary

        print(format_summary(export(args.db, args.out, args.pairs)))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for errors in the user's input, as the main CLI)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except PosttrainError as error:
        print(f"posttrain collect {args.command}: error\n{error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0

