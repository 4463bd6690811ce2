"""``python -m hermes.train``: train Hermes, then the supervised-only baseline, and compare.

With no arguments: the ``default`` preset (the generated phantom, sized for a CPU), Hermes and
then the supervised-only baseline with the same data, networks and schedule; the comparison is
printed and written to ``<out>/report/`` (each run has its own ``<out>/<name>/report/``).

    python -m hermes.train                                  # phantom, Hermes vs supervised-only
    python -m hermes.train --data /path/Dataset_BUSI_with_GT --dataset busi --set optim.steps=200
    python -m hermes.train --config paper --set data.labeled=72 --baseline none
    python -m hermes.train --method fixmatch             # or mean_teacher, vs supervised-only
    python -m hermes.train --resume runs/default/hermes/last.pt

A folder that already holds a run is not written into: continue it with ``--resume``, choose
another ``--out``, or replace it with ``--overwrite``. A resumed run continues in the folder of
its checkpoint, or in ``<out>/<name>`` with ``--out`` / ``--set out_dir`` (as a new run would).
Ctrl-C saves a checkpoint at the current step and exits with status 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from hermes.train.config import BACKENDS, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hermes.train",
        description="Train the Hermes method (and the supervised-only baseline) and report.",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="preset name in hermes/configs (default, paper) or a YAML file "
        "(default: 'default', or the checkpoint's with --resume)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. optim.steps=100 or method.weights.contrast_img=0",
    )
    parser.add_argument("--data", help="dataset folder (real data)")
    parser.add_argument("--dataset", choices=("busi", "udiat", "folder", "phantom"))
    parser.add_argument(
        "--baseline",
        choices=("supervised", "none"),
        default="supervised",
        help="also train the supervised-only baseline and compare (default)",
    )
    parser.add_argument(
        "--method",
        choices=("hermes", "mean_teacher", "fixmatch"),
        help="the semi-supervised method (sets method.mode and the run's name; default hermes)",
    )
    parser.add_argument("--out", help="output folder (default: the config's out_dir)")
    parser.add_argument("--backend", choices=BACKENDS, help="backend of the fused ops")
    parser.add_argument("--resume", help="continue a run from its checkpoint (no baseline)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run(s) already in the output folder (default: refuse)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many steps (the schedule keeps optim.steps)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Any:
    overrides: list[Any] = list(args.overrides)
    if args.data is not None or args.dataset is not None:
        if args.dataset is None:
            raise ValueError("--data needs --dataset (busi, udiat or folder)")
        if args.data is None and args.dataset != "phantom":
            raise ValueError(f"--dataset {args.dataset} needs --data PATH")
        overrides += [("data.dataset", args.dataset), ("data.root", args.data)]
    if args.method is not None:
        overrides += [("method.mode", args.method), ("name", args.method)]
    if args.backend is not None:
        overrides.append(("backend", args.backend))
    if args.out is not None:
        overrides.append(("out_dir", args.out))
    if args.resume is None:
        return load_config(args.config or "default", overrides)
    resume = Path(args.resume)  # a distributed run's checkpoint is a folder with model.pt
    out_given = args.out is not None or any(
        isinstance(o, str) and o.split("=", 1)[0].strip() == "out_dir" for o in args.overrides
    )
    if args.config is not None:
        cfg = load_config(args.config, overrides)
    else:
        from hermes.train.checkpoint import load_checkpoint

        base = load_checkpoint(resume / "model.pt" if resume.is_dir() else resume)["config"]
        cfg = load_config(None, overrides, base=base)
        if not out_given:  # the run continues in its own folder
            folder = resume.parent if resume.is_file() else Path(base["out_dir"])
            return replace(cfg, out_dir=str(folder))
    return replace(cfg, out_dir=str(Path(cfg.out_dir) / cfg.name))  # as a new run's folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from hermes.train.interrupt import Interrupted
    from hermes.train.loop import train
    from hermes.train.preflight import check_out_dir
    from hermes.train.report import comparison_table, paired_comparison, write_comparison_report

    try:
        cfg = build_config(args)
        if cfg.distributed.workers > 1:  # Ray Train + DeepSpeed (hermes.train.distributed)
            from hermes.train.distributed import train_on_ray as train
        if args.resume is not None:
            result = train(
                cfg, resume=args.resume, stop_after=args.stop_after, overwrite=args.overwrite
            )
            print(comparison_table([result]))
            return 0
        root = Path(cfg.out_dir)
        runs = [replace(cfg, out_dir=str(root / cfg.name))]
        if args.baseline == "supervised" and cfg.method.mode != "supervised":
            runs.append(
                replace(
                    cfg,
                    name="supervised",
                    out_dir=str(root / "supervised"),
                    method=replace(cfg.method, mode="supervised"),
                )
            )
        for run in runs:  # every folder before the first run starts
            check_out_dir(run.out_dir, overwrite=args.overwrite)
        results = [train(run, stop_after=args.stop_after) for run in runs]
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(
            f"interrupted at step {exc.step} of {exc.total}: checkpoint saved to "
            f"{exc.checkpoint}\nresume with: python -m hermes.train --resume {exc.checkpoint}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print(
            "interrupted: stopped without saving (the last checkpoint, if any, is kept)",
            file=sys.stderr,
        )
        return 130
    finished = [r for r in results if r.final is not None]
    if len(finished) > 1:
        folder = write_comparison_report(finished, root / "report")
        print(f"\nReport: {folder / 'summary.md'}")
    print(comparison_table(finished) if finished else "stopped before the end: no final metrics")
    paired = paired_comparison(finished)
    if paired:
        print(f"\nImage by image ({finished[0].cfg.name} - {finished[1].cfg.name}):\n{paired}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
