"""``narrowgate toy ...``: train the toy-world models and summarise them."""
from __future__ import annotations

import argparse
import time

from ..console import display_path
from ..toy.registry import TOY_MODEL_NAMES, toy_model_dir, toy_report


def add_toy_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``toy train`` and ``toy report`` under the top-level ``narrowgate`` parser."""
    toy = subparsers.add_parser("toy", help="toy-world models trained by the repo itself")
    commands = toy.add_subparsers(dest="toy_command", required=True)
    train = commands.add_parser("train", help="train the toy models that are missing from the cache")
    train.add_argument("--only", action="append", choices=TOY_MODEL_NAMES, metavar="NAME",
                       help=f"train only this model (repeatable); one of {', '.join(TOY_MODEL_NAMES)}")
    train.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="training device (default: cuda when available, else cpu)")
    train.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    train.add_argument("--workers", type=int, default=None,
                       help="parallel training processes (default: one per CPU core on CPU, 1 on GPU)")
    train.set_defaults(handler=_train)
    report = commands.add_parser("report", help="print the summary table of trained toy models")
    report.set_defaults(handler=_report)


def _train(args: argparse.Namespace) -> int:
    from .orchestration import train_all

    names = tuple(args.only) if args.only else TOY_MODEL_NAMES
    start = time.perf_counter()
    train_all(names, device=args.device, force=args.force, workers=args.workers)
    print(f"toy models ready in {time.perf_counter() - start:.1f} s:")
    for name in names:
        print(f"  {name}: {display_path(toy_model_dir(name))}")
    _report(args)
    return 0


def _report(args: argparse.Namespace) -> int:
    table = toy_report()
    print("no trained toy models in the cache" if table.empty else table.to_string(index=False))
    return 0

