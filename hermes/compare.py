r"""``python -m hermes.compare``: two models' per-image results on the same test images ->
the paired differences of AUC, accuracy, lesion Dice and IoU, with 95 % intervals and
p-values (the tests are described in :mod:`hermes.eval.paired`).

    python -m hermes.compare runs/default/supervised/report/test_predictions.csv \
        runs/default/hermes/report/test_predictions.csv --names supervised hermes
    python -m hermes.evaluate a.pt --per-image a.csv
    python -m hermes.evaluate b.pt --per-image b.csv
    python -m hermes.compare a.csv b.csv --out diff.json

Two methods over several seeds or folds, each pair of runs on its own test images: one
``--pair A.csv B.csv`` per pair. Each pair is compared as above, then the differences are
averaged over the pairs, with a 95 % interval from the test images (a bootstrap over the
distinct test images of all pairs, so test sets that overlap are not counted twice), a t
interval over the pairs and a test of whether the pairs disagree by more than their test
images explain (:func:`hermes.eval.paired.pool`):

    python -m hermes.compare --names supervised hermes \
        --pair runs/s0/supervised/test_predictions.csv runs/s0/hermes/test_predictions.csv \
        --pair runs/s1/supervised/test_predictions.csv runs/s1/hermes/test_predictions.csv

The differences are B - A. The images are matched by id; two files of a pair that hold
different images (or different labels for an image) are an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hermes.eval.paired import (
    compare,
    difference_record,
    format_comparison,
    format_pooled,
    pool,
    read_per_image,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hermes.compare",
        description="Paired comparison of two models' per-image results on the same images; "
        "with --pair, of two methods over several seeds or folds.",
    )
    parser.add_argument(
        "a",
        nargs="?",
        help="per-image CSV of model A (report/test_predictions.csv, or "
        "python -m hermes.evaluate --per-image)",
    )
    parser.add_argument("b", nargs="?", help="per-image CSV of model B, the same images")
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help="one seed's or fold's per-image CSVs of A and B (repeat per pair; instead of the "
        "two positional files)",
    )
    parser.add_argument("--names", nargs=2, metavar=("A", "B"), help="names for the two models")
    parser.add_argument(
        "--resamples",
        type=int,
        default=2000,
        help="bootstrap resamples of the test images for the pooled interval (default 2000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed")
    parser.add_argument("--out", help="write the differences as JSON here")
    args = parser.parse_args(argv)
    if args.pair and (args.a or args.b):
        parser.error("give two files or --pair A B (repeated), not both")
    if not args.pair and not (args.a and args.b):
        parser.error("give the two per-image files A and B, or --pair A B per seed")
    if args.resamples < 2:
        parser.error(f"--resamples must be at least 2 (got {args.resamples})")
    files = args.pair or [[args.a, args.b]]
    names = args.names or (["A", "B"] if args.pair else [args.a, args.b])
    try:
        pairs = [(read_per_image(a), read_per_image(b)) for a, b in files]
        if len(pairs) == 1:
            per_pair, pooled = [compare(*pairs[0], names)], []
        else:
            per_pair, pooled = pool(pairs, names, args.resamples, args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k, ((a, _), differences) in enumerate(zip(pairs, per_pair, strict=True)):
        if len(pairs) > 1:
            print(f"pair {k + 1}: {files[k][0]} vs {files[k][1]}")
        print(format_comparison(a, differences, names))
        if len(pairs) > 1:
            print()
    if pooled:
        print(format_pooled(pairs, pooled, names))
    if args.out:
        records = [
            {"a": a, "b": b, "images": len(pa), "differences": [difference_record(x) for x in d]}
            for (a, b), (pa, _), d in zip(files, pairs, per_pair, strict=True)
        ]
        if len(pairs) == 1:
            record = {**records[0], "names": names}
        else:
            record = {
                "names": names,
                "pairs": records,
                "pooled": [difference_record(d) for d in pooled],
                "resamples": args.resamples,
                "seed": args.seed,
            }
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
