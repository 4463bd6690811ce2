"""``python -m hermes.predict``: a checkpoint and a folder of images -> lesion mask PNGs and a
CSV of class probabilities (the prediction itself is :mod:`hermes.eval.predict`).

    python -m hermes.predict runs/hermes/best.pt images/ --out predictions/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hermes.eval.evaluate import add_tta_argument
from hermes.eval.predict import predict_folder
from hermes.train.checkpoint import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hermes.predict",
        description="Predict lesion masks and class probabilities for a folder of images.",
        epilog="Exit status: 0; 1 when some images could not be read (skipped, listed in "
        "failed.csv); 2 on an error (checkpoint, folder).",
    )
    parser.add_argument("checkpoint", help="a checkpoint written by python -m hermes.train")
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--device", default="cpu")
    add_tta_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model, cfg = load_model(args.checkpoint, args.device)
        done = predict_folder(
            model,
            args.images,
            args.out,
            cfg.data.image_size,
            cfg.data.classes,
            args.device,
            tta=args.tta if args.tta is not None else cfg.eval.tta,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(done.rows)} images -> {Path(args.out) / 'predictions.csv'}")
    if done.failed:
        print(
            f"{len(done.failed)} image(s) could not be read, skipped -> "
            f"{Path(args.out) / 'failed.csv'}: " + ", ".join(name for name, _ in done.failed),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
