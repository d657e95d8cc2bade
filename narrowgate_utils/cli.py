"""The ``narrowgate`` console script: a small argparse dispatcher.

Each command group registers itself with an ``add_*_parser(subparsers)`` function that sets a
``handler(args) -> int`` default; add a new group by appending it to :data:`COMMAND_GROUPS`.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

#: "module:function" of every command group's parser registration
COMMAND_GROUPS = ("narrowgate_utils.training.cli:add_toy_parser", "narrowgate_utils.runner:add_run_parser",
                  "narrowgate_utils.standin:add_standin_parser")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narrowgate", description="Reproduction toolkit for 'The Narrow Gate'.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for entry in COMMAND_GROUPS:
        module, function = entry.split(":")
        getattr(importlib.import_module(module), function)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
