"""``python -m hermes.evaluate``: a checkpoint written by ``python -m hermes.train`` -> test
metrics (the evaluation itself is :mod:`hermes.eval.evaluate`).

    python -m hermes.evaluate runs/hermes/best.pt                       # the run's own test split
    python -m hermes.evaluate best.pt --data /path/Dataset_BUSI_with_GT --dataset busi
    python -m hermes.evaluate best.pt --data /path/UDIAT --dataset udiat --split all
    python -m hermes.evaluate best.pt --per-image preds.csv    # and each image's results

``--per-image`` writes one row per evaluated image (id, label, predicted class, class
probabilities, lesion Dice and IoU); ``python -m hermes.compare`` compares two such files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from hermes.eval.evaluate import (
    add_tta_argument,
    evaluate,
    evaluation_loader,
    format_metrics,
    json_metrics,
)
from hermes.eval.metrics import undefined_reasons
from hermes.eval.paired import write_per_image
from hermes.train.checkpoint import load_model

logger = logging.getLogger("hermes.eval.evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hermes.evaluate", description="Evaluate a checkpoint on a test split."
    )
    parser.add_argument("checkpoint", help="a checkpoint written by python -m hermes.train")
    parser.add_argument("--data", help="dataset folder (default: the checkpoint's own data)")
    parser.add_argument("--dataset", choices=("busi", "udiat", "folder", "phantom"))
    parser.add_argument("--split-file", help="a split JSON to evaluate the test part of")
    parser.add_argument(
        "--split",
        choices=("test", "all"),
        default="test",
        help="the test part of the split (default) or every image of the data",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument(
        "--per-image",
        metavar="CSV",
        help="write each image's label, predicted class, class probabilities, lesion Dice "
        "and IoU here (the input of python -m hermes.compare)",
    )
    add_tta_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        model, cfg = load_model(args.checkpoint, args.device)
        data_cfg = cfg.data
        if args.data is not None or args.dataset is not None:
            if args.data is None or args.dataset is None:
                raise ValueError("--data and --dataset go together")
            data_cfg = replace(data_cfg, dataset=args.dataset, root=args.data, split_file=None)
        if args.split_file is not None:
            if not Path(args.split_file).is_file():
                raise FileNotFoundError(f"--split-file: no file {args.split_file}")
            data_cfg = replace(data_cfg, split_file=args.split_file)
        loader = evaluation_loader(data_cfg, args.split)
        tta = args.tta if args.tta is not None else cfg.eval.tta
        result = evaluate(
            model,
            loader,
            args.device,
            max_batches=args.max_batches,
            tta=tta,
            classes=data_cfg.classes,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_metrics(result.metrics))
    undefined = undefined_reasons(result.metrics, result.label_counts, data_cfg.classes)
    for name, reason in undefined.items():
        logger.warning(
            "warning: %s is undefined: %s%s", name, reason, " (written as null)" if args.out else ""
        )
    if args.out:
        Path(args.out).write_text(json_metrics(result.metrics) + "\n")
    if args.per_image:
        assert result.per_image is not None  # evaluate() was given the class names
        write_per_image(args.per_image, result.per_image)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
