"""``colzero train-phase``: run one training phase from a TOML/JSON file and/or flags."""

from __future__ import annotations

import argparse

from colzero.schema import from_dict
from colzero.training.config import DataSource, PhaseConfig, load_phase_config


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train-phase``."""
    p = sub.add_parser(
        "train-phase",
        help="run one training phase (see colzero.training.config.PhaseConfig)",
        description="Run one training phase. Flags override values of --config; without --config, "
        "--model, --data, --output, --batch-size and --lr are required.",
    )
    p.add_argument("--config", help="PHASE.toml or PHASE.json (a PhaseConfig table)")
    p.add_argument("--model", help="start model folder or hub name")
    p.add_argument("--data", action="append", help="a JSONL/Parquet/HF source with columns query/pos[/neg]")
    p.add_argument("--output", help="output folder")
    p.add_argument("--loss", choices=["contrastive", "cached_contrastive", "distillation"])
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--name", default=None)
    p.add_argument(
        "--resume", dest="resume", action="store_true", default=True, help="(default) continue a run"
    )
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> PhaseConfig:
    """The phase of ``--config`` (if given) with the flags applied on top."""
    base = load_phase_config(args.config).to_dict() if args.config else {}
    if args.model:
        base["model"] = args.model
    if args.output:
        base["output_dir"] = args.output
    if args.data:
        base["sources"] = [
            DataSource(f"data{i}" if len(args.data) > 1 else "data", d).to_dict()
            for i, d in enumerate(args.data)
        ]
    if args.loss:
        base["loss"] = dict(base.get("loss", {}), kind=args.loss)
    if args.lr is not None:
        base["optim"] = dict(base.get("optim", {}), learning_rate=args.lr)
    for flag, key in (("batch_size", "batch_size"), ("max_steps", "max_steps"), ("epochs", "epochs")):
        if getattr(args, flag) is not None:
            base[key] = getattr(args, flag)
    base.setdefault("name", args.name or "phase")
    if args.name:
        base["name"] = args.name
    if "optim" not in base:
        raise ValueError("--lr (or optim.learning_rate in --config) is required")
    missing = sorted(k for k in ("model", "output_dir", "sources", "batch_size") if base.get(k) is None)
    if missing:
        raise ValueError(
            f"missing {missing}: give --config or the flags --model/--output/--data/--batch-size"
        )
    return from_dict(PhaseConfig, base, args.config or "train-phase")


def run(args: argparse.Namespace) -> int:
    """``colzero train-phase``: train the phase and print the final model's folder."""
    import os

    from colzero.cli.live import run_view
    from colzero.cli.term import console
    from colzero.training.cost import PhaseCost
    from colzero.training.trainer import run_phase

    cfg = build_config(args)
    main_rank = (os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0") == "0"
    with run_view(console(), f"colzero train-phase {cfg.name}", enabled=main_rank) as view:
        view.run_started(cfg.name, [cfg.name])
        final = run_phase(cfg, resume=args.resume, progress=view)
        cost = PhaseCost.read(cfg.output_dir) if cfg.output_dir else None
        record = {"steps": cost.steps, "wall_s": cost.wall_s, "examples": cost.examples} if cost else {}
        view.phase_finished(cfg.name, {**record, "skipped": False})
    print(final)
    return 0
