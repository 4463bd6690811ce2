"""``python -m hermes.experiments``: supervised-only, Hermes and ablations over budgets x seeds.

    python -m hermes.experiments --dataset phantom --budgets 20 40 --seeds 0 1 2 \\
        --out runs/experiments/phantom
    python -m hermes.experiments --dataset busi --data /path/Dataset_BUSI_with_GT \\
        --config hermes/configs/experiments/busi_cpu.yaml --budgets 40 80 --seeds 0 1 2 \\
        --out runs/experiments/busi --workers 2

Rerunning the same command trains only the runs without a result; ``--tables-only`` rewrites
``results.md``, ``results.png``, ``summary.json`` and ``gains_per_image.json`` from the results
present.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hermes.experiments.runner import Matrix, RunSpec, load_result, result_path, run_matrix
from hermes.experiments.tables import (
    image_comparisons,
    markdown,
    plot,
    plot_pseudo,
    summarize,
)
from hermes.experiments.variants import VARIANTS, get_variants


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hermes.experiments", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dataset", choices=("phantom", "busi", "udiat", "folder"), default="phantom")
    p.add_argument("--data", help="dataset folder (all but the phantom)")
    p.add_argument("--config", default="default", help="trainer preset name or YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trainer field for every run, e.g. optim.steps=100",
    )
    p.add_argument("--budgets", type=int, nargs="+", default=[40, 80], help="label budgets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(VARIANTS),
        help="rows to train (default: all)",
    )
    p.add_argument("--out", default="runs/experiments", help="experiment folder")
    p.add_argument("--workers", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--title", default="", help="title of results.md and the figure")
    p.add_argument("--tables-only", action="store_true", help="only rewrite the tables")
    return p.parse_args(argv)


def build_matrix(args: argparse.Namespace) -> Matrix:
    overrides: list[Any] = [("data.dataset", args.dataset)]
    if args.dataset != "phantom":
        if args.data is None:
            raise ValueError(f"--dataset {args.dataset} needs --data PATH")
        if not Path(args.data).is_dir():
            raise FileNotFoundError(f"--data: no folder {args.data}")
        overrides.append(("data.root", args.data))
    overrides += list(args.overrides)
    if args.workers < 1:
        raise ValueError(f"--workers: expected an int >= 1, got {args.workers}")
    return Matrix(
        Path(args.out),
        list(args.budgets),
        list(args.seeds),
        get_variants(args.variants),
        preset=args.config,
        overrides=overrides,
    )


def write_tables(matrix: Matrix, results: dict[RunSpec, dict[str, Any]], title: str) -> Path:
    """Write ``results.md``, ``results.png``, ``summary.json`` and, where runs kept their
    per-image test predictions, ``gains_per_image.json`` (every seed's and the pooled
    comparison against supervised-only, :func:`~hermes.experiments.tables.image_comparisons`)
    into the experiment folder."""
    title = title or f"Experiments in {matrix.out}"
    md = matrix.out / "results.md"
    md.write_text(markdown(matrix, results, title))
    plot(matrix, results, matrix.out / "results.png", title)
    if any(v.name == "hermes" for v in matrix.variants):
        plot_pseudo(
            matrix, matrix.out / "pseudo_labels.png", "hermes", f"{title}: Hermes pseudo-labels"
        )
    summary = summarize(matrix, results)
    (matrix.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    comparisons = [c.record() for c in image_comparisons(matrix)]
    if comparisons:
        (matrix.out / "gains_per_image.json").write_text(json.dumps(comparisons, indent=1) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        matrix = build_matrix(args)
        if args.tables_only:
            results = _present(matrix)
        else:
            results = run_matrix(
                matrix,
                workers=args.workers,
                on_result=lambda spec, res: write_tables(matrix, _present(matrix), args.title),
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md = write_tables(matrix, results, args.title)
    print(md.read_text())
    print(f"Tables: {md}\nFigure: {matrix.out / 'results.png'}")
    return 0


def _present(matrix: Matrix) -> dict[RunSpec, dict[str, Any]]:
    """The results on disk (the tables are refreshed after every finished run)."""
    out = {}
    for spec in matrix.specs():
        loaded = load_result(result_path(matrix.out, spec))
        if loaded is not None:
            out[spec] = loaded
    return out


if __name__ == "__main__":
    raise SystemExit(main())
