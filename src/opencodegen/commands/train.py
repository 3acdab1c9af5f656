"""`opencodegen train`: train or fine-tune a CodeGen model from a YAML/TOML run config."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opencodegen.training.config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a model (one process, or under torchrun with DDP / FSDP2)",
        description="Train from a run config (see docs/training.md and configs/). Several processes: "
        "torchrun --nproc_per_node N -m opencodegen.cli train --config FILE. Export a checkpoint as an HF "
        "directory with `opencodegen convert checkpoint`.",
    )
    p.add_argument("--config", help="run config (.yaml, .yml or .toml); without it the defaults apply")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings over the config file, e.g. lr=1e-4 max_steps=200 model_overrides.n_layer=4")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue a run: 'auto' takes the newest good checkpoint of out_dir (or starts fresh), "
                   "PATH a checkpoint or run directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; the exit status is 0 exactly when the run reached its end (max_steps or max_time),
    143 when SIGTERM stopped it. A torchrun worker whose process group the run created ends here
    with that status, without interpreter finalization (see distributed.exit_worker)."""
    import yaml

    from opencodegen.training import distributed as dist_utils
    from opencodegen.training.config import TrainConfig

    config = TrainConfig.load(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if not dist_utils.launched_by_torchrun() or dist_utils.group_exists():
        return _train(config, args.resume)  # the caller owns the process (and any group)
    try:
        status = _train(config, args.resume)
    except BaseException as exc:  # reported as the CLI would; the worker ends before the traceback is freed
        dist_utils.exit_worker(dist_utils.report_failure(exc))
    dist_utils.exit_worker(status)


def _train(config: TrainConfig, resume: str | None) -> int:
    import os
    import sys

    from opencodegen.training.signals import EXIT_STATUS, Terminated
    from opencodegen.training.trainer import train

    try:
        summary = train(config, resume=resume)
    except Terminated as stop:
        print(f"{stop}; the run did not finish (continue it with --resume auto from its last checkpoint)",
              file=sys.stderr)
        return EXIT_STATUS
    if summary["val"] is not None and os.environ.get("RANK", "0") == "0":
        print(f"done: step {summary['step']}, validation loss {summary['val']['loss']:.4f}")
    return 0
