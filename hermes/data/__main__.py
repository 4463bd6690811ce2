"""``python -m hermes.data ROOT``: inspect a dataset folder and optionally write a split.

Decodes every image and mask, and reports counts per class, image sizes, masks per image (and
mask files that belong to no image), every problem found and near-duplicate groups (perceptual
hash). Problems are those the trainer's readers stop at (see :mod:`hermes.data.readers`): a
missing dataset folder, label file or mask, a file that does not decode, a size mismatch, an
empty class folder, a folder that is not a dataset, an unlabeled image, and in a CSV of labels
a duplicate id or a label not in ``--classes``. Exit status 1 when there is any problem, else 0;
never a traceback for a bad dataset. ``--split-out PATH`` writes a split of the classes given by
``--classes`` (default benign and malignant) to a JSON file.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from hermes.data.readers import Scan, scan_busi, scan_folder
from hermes.data.splits import duplicate_groups, make_split, perceptual_hashes


def detect_layout(root: Path) -> str:
    """``"udiat"`` if ``original/`` and ``GT/`` exist, ``"folder"`` for ``images/`` and
    ``masks/``, else ``"busi"``."""
    if (root / "original").is_dir() and (root / "GT").is_dir():
        return "udiat"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    return "busi"


LAYOUTS = (
    "BUSI: <class>/<name>.png with <name>_mask.png; folder: images/, masks/ and labels.csv; "
    "UDIAT: original/, GT/ and one CSV of labels"
)


def scan(root: Path, layout: str, classes: list[str] | None = None) -> Scan:
    """Scan ``root`` in ``layout`` without stopping at problems (see :func:`inspect`).

    ``classes`` are the labels a CSV of labels may hold (BUSI reads every class folder).
    """
    if layout == "busi":
        return scan_busi(root)
    if layout == "udiat":
        return scan_folder(root, images="original", masks="GT", labels=None, classes=classes)
    return scan_folder(root, classes=classes)


def inspect(root: Path, layout: str, classes: list[str], detected: bool) -> Scan:
    """:func:`scan`, with the problems that stop a scan (a missing folder or label file, a
    folder that is not a dataset) returned as problems too; ``detected``: ``layout`` was
    detected, not asked for."""
    if not root.is_dir():
        return Scan(problems=[f"dataset folder not found: {root}"])
    try:
        return scan(root, layout, classes)
    except (ValueError, FileNotFoundError) as err:
        problems = [str(err)]
        if detected and layout == "busi":  # BUSI is the fallback: no other layout matched
            problems.append(f"no dataset layout matches {root} ({LAYOUTS})")
        return Scan(problems=problems)


def _parse_budget(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 when no problem was found, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m hermes.data", description=__doc__)
    parser.add_argument("root", type=Path, help="dataset folder")
    parser.add_argument("--layout", choices=("auto", "busi", "udiat", "folder"), default="auto")
    parser.add_argument(
        "--duplicate-distance",
        type=int,
        default=10,
        help="phash Hamming distance for near-duplicates (negative: skip)",
    )
    parser.add_argument("--split-out", type=Path, help="write a split JSON here")
    parser.add_argument(
        "--classes", nargs="+", default=["benign", "malignant"], help="classes of the split"
    )
    parser.add_argument(
        "--labeled",
        type=_parse_budget,
        default=72,
        help="label budget: a count, or a fraction of train with a '.'",
    )
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    root: Path = args.root
    layout = detect_layout(root) if args.layout == "auto" else args.layout
    classes = [c.lower() for c in args.classes]
    result = inspect(root, layout, classes, detected=args.layout == "auto")
    records = result.records
    per_class = Counter(r.label for r in records)
    print(f"dataset {root} (layout {layout})")
    detail = ", ".join(f"{n} {c}" for c, n in sorted(per_class.items()))
    print(f"images: {len(records)}" + (f" ({detail})" if detail else ""))
    if result.sizes:
        w = np.array([s[0] for s in result.sizes.values()])
        h = np.array([s[1] for s in result.sizes.values()])
        print(
            f"image sizes (WxH): width {w.min()}-{w.max()} (median {int(np.median(w))}), "
            f"height {h.min()}-{h.max()} (median {int(np.median(h))})"
        )
    masks_per_image = Counter(len(r.masks) for r in records)
    mask_files = sum(len(r.masks) for r in records)
    if records:
        print(
            "masks per image: "
            + ", ".join(f"{k}: {v} image(s)" for k, v in sorted(masks_per_image.items()))
        )
    total_masks = mask_files + len(result.orphan_masks)
    state = (
        "every mask accounted for"
        if not result.orphan_masks
        else (f"{len(result.orphan_masks)} mask file(s) belong to no image, ignored")
    )
    print(f"mask files: {total_masks} ({mask_files} attached to images; {state})")
    for path in result.orphan_masks:
        print(f"  - mask without image: {path}")
    if result.problems:
        print(f"problems: {len(result.problems)}")
        for line in result.problems:
            print(f"  - {line}")
    else:
        print("problems: none")

    groups = None
    if args.duplicate_distance >= 0 and records:
        hashes = perceptual_hashes(records)
        groups = duplicate_groups(records, args.duplicate_distance, hashes)
        dup = [g for g in groups if len(g) > 1]
        in_dup = sum(len(g) for g in dup)
        mixed = [g for g in dup if len({records[i].label for i in g}) > 1]
        print(
            f"near-duplicate groups (phash distance <= {args.duplicate_distance}): {len(dup)} "
            f"groups holding {in_dup} images; {len(mixed)} group(s) span classes"
        )
        for g in dup[:10]:
            print("  - " + ", ".join(records[i].id for i in g))
        if len(dup) > 10:
            print(f"  ... and {len(dup) - 10} more")

    if args.split_out:
        wanted = [c.lower() for c in args.classes]
        keep = [i for i, r in enumerate(records) if r.label in wanted]
        subset = [records[i] for i in keep]
        sub_groups = None
        if groups is not None:
            index = {old: new for new, old in enumerate(keep)}
            sub_groups = [[index[i] for i in g if i in index] for g in groups]
            sub_groups = [g for g in sub_groups if g]
        split = make_split(
            subset,
            args.labeled,
            args.test_fraction,
            args.seed,
            args.duplicate_distance,
            groups=sub_groups,
        )
        split.save(args.split_out)
        print(
            f"split ({', '.join(wanted)}): {len(split.labeled)} labeled, "
            f"{len(split.unlabeled)} unlabeled, {len(split.test)} test -> {args.split_out}"
        )
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
