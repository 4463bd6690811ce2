r"""``python -m hermes.compare``: two models' per-image results on the same test images ->
the paired differences of AUC, accuracy, lesion Dice and IoU, with 95 % intervals and
p-values (the tests are described in :mod:`hermes.eval.paired`).

    python -m hermes.compare runs/default/supervised/report/test_predictions.csv \
        runs/default/hermes/report/test_predictions.csv --names supervised hermes
    python -m hermes.evaluate a.pt --per-image a.csv
    python -m hermes.evaluate b.pt --per-image b.csv
    python -m hermes.compare a.csv b.csv --out diff.json

The differences are B - A. The images are matched by id; two files of different images (or
of different labels for an image) are an error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from hermes.eval.paired import compare, format_comparison, read_per_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hermes.compare",
        description="Paired comparison of two models' per-image results on the same images.",
    )
    parser.add_argument(
        "a",
        help="per-image CSV of model A (report/test_predictions.csv, or "
        "python -m hermes.evaluate --per-image)",
    )
    parser.add_argument("b", help="per-image CSV of model B, the same images")
    parser.add_argument("--names", nargs=2, metavar=("A", "B"), help="names for the two models")
    parser.add_argument("--out", help="write the differences as JSON here")
    args = parser.parse_args(argv)
    names = args.names or [args.a, args.b]
    try:
        a, b = read_per_image(args.a), read_per_image(args.b)
        differences = compare(a, b, names)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(a, differences, names))
    if args.out:
        rows = [
            {
                k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                for k, v in {**asdict(d), "diff": d.diff}.items()
            }
            for d in differences
        ]
        record = {"a": args.a, "b": args.b, "names": names, "images": len(a), "differences": rows}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
