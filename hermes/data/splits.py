"""Seeded, reproducible, duplicate-aware train/test and labeled/unlabeled splits.

The protocol follows the paper: per class ``1 - test_fraction`` train and
``test_fraction`` test; from train a labeled subset of a fixed count, split evenly between the
classes; the rest of train is unlabeled. Near-duplicate images (perceptual hash within a
Hamming distance) form groups, and a group always lands on one side of every split.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hermes.data.readers import Record

logger = logging.getLogger(__name__)

SPLIT_FORMAT = 1


@dataclass(frozen=True)
class Split:
    """Ids of the three parts of a dataset.

    Attributes:
        labeled: train ids whose labels and masks are used.
        unlabeled: the other train ids.
        test: held-out ids.
        meta: how the split was made (seed, budgets, thresholds), saved along with it.
    """

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    test: tuple[str, ...]
    meta: dict | None = None

    @property
    def train(self) -> tuple[str, ...]:
        return self.labeled + self.unlabeled

    def save(self, path: str | Path) -> None:
        """Write the split as JSON (sorted ids, plus ``meta``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": SPLIT_FORMAT,
            "meta": self.meta or {},
            "labeled": sorted(self.labeled),
            "unlabeled": sorted(self.unlabeled),
            "test": sorted(self.test),
        }
        path.write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a split (missing keys or overlapping parts).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"split file not found: {path}")
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"split file {path} is not valid JSON: {err}") from err
        missing = [k for k in ("labeled", "unlabeled", "test") if k not in payload]
        if missing:
            raise ValueError(f"split file {path} lacks key(s) {missing}")
        split = cls(
            tuple(payload["labeled"]),
            tuple(payload["unlabeled"]),
            tuple(payload["test"]),
            payload.get("meta") or {},
        )
        parts = [set(split.labeled), set(split.unlabeled), set(split.test)]
        if sum(map(len, parts)) != len(set().union(*parts)):
            raise ValueError(f"split file {path} has ids in more than one part")
        return split

    def check(self, records: Sequence[Record]) -> None:
        """Raise ``ValueError`` if the split names ids absent from ``records``."""
        known = {r.id for r in records}
        unknown = [i for i in self.labeled + self.unlabeled + self.test if i not in known]
        if unknown:
            raise ValueError(
                f"split names {len(unknown)} id(s) not in the dataset, e.g. {unknown[:3]}"
            )


def perceptual_hashes(records: Sequence[Record], hash_size: int = 8) -> np.ndarray:
    """Perceptual hash (``imagehash.phash``) of every image, as a bool array (N, hash_size**2)."""
    import imagehash
    from PIL import Image

    bits = np.zeros((len(records), hash_size * hash_size), dtype=bool)
    for i, rec in enumerate(records):
        try:
            with Image.open(rec.image) as im:
                bits[i] = imagehash.phash(im.convert("L"), hash_size=hash_size).hash.ravel()
        except OSError as err:
            raise ValueError(f"cannot read image {rec.image}: {err}") from err
    return bits


def duplicate_groups(
    records: Sequence[Record], max_distance: int = 10, hashes: np.ndarray | None = None
) -> list[list[int]]:
    """Group near-duplicate images: pairs within ``max_distance`` bits of phash are joined.

    Groups are connected components (transitive closure) of the pair graph.

    Args:
        records: the images.
        max_distance: largest Hamming distance between 64-bit perceptual hashes of a pair;
            a negative value disables grouping.
        hashes: precomputed :func:`perceptual_hashes` (optional).

    Returns:
        a list of groups (record indices), every record in exactly one group, sorted.
    """
    n = len(records)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if max_distance >= 0 and n > 1:
        bits = perceptual_hashes(records) if hashes is None else hashes
        b = bits.astype(np.int32)
        dist = b.shape[1] - (b @ b.T + (1 - b) @ (1 - b).T)  # Hamming distance matrix
        ii, jj = np.nonzero(np.triu(dist <= max_distance, k=1))
        for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def _take(
    groups: list[list[int]],
    labels: Sequence[str],
    targets: dict[str, int],
) -> tuple[list[list[int]], list[list[int]]]:
    """Greedily take whole groups (in the given order) while no class exceeds its target."""
    taken, rest = [], []
    count: Counter[str] = Counter()
    for g in groups:
        need = Counter(labels[i] for i in g)
        if all(count[c] + k <= targets.get(c, 0) for c, k in need.items()):
            taken.append(g)
            count.update(need)
        else:
            rest.append(g)
    short = {c: t - count[c] for c, t in targets.items() if count[c] < t}
    if short:
        logger.warning("split: could not reach the per-class target for %s (groups too big)", short)
    return taken, rest


def _even(total: int, classes: Sequence[str]) -> dict[str, int]:
    """Split ``total`` evenly over ``classes`` (earlier classes get the remainder)."""
    base, extra = divmod(total, len(classes))
    return {c: base + (1 if k < extra else 0) for k, c in enumerate(classes)}


def make_split(
    records: Sequence[Record],
    labeled: int | float,
    test_fraction: float = 0.3,
    seed: int = 0,
    max_distance: int = 10,
    groups: list[list[int]] | None = None,
) -> Split:
    """Make the paper's split.

    Args:
        records: the samples (their classes decide the stratification).
        labeled: label budget, a count (int) or a fraction of the train part (float in (0, 1]).
            It is split evenly between the classes.
        test_fraction: per-class fraction held out for testing.
        seed: random seed; the same inputs and seed give the same split.
        max_distance: phash Hamming distance for near-duplicates (negative: no grouping).
        groups: precomputed groups of record indices (overrides ``max_distance``).

    Raises:
        ValueError: a budget or fraction out of range, or more labels asked than a class has.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not records:
        raise ValueError("cannot split an empty dataset")
    labels = [r.label for r in records]
    classes = sorted(set(labels))
    per_class = Counter(labels)
    if groups is None:
        groups = duplicate_groups(records, max_distance)
    rng = np.random.default_rng(seed)
    order = [groups[k] for k in rng.permutation(len(groups))]
    test_targets = {c: int(round(per_class[c] * test_fraction)) for c in classes}
    test_groups, train_groups = _take(order, labels, test_targets)
    n_train = sum(len(g) for g in train_groups)
    if isinstance(labeled, float) and not isinstance(labeled, bool):
        if not 0.0 < labeled <= 1.0:
            raise ValueError(f"labeled fraction must be in (0, 1], got {labeled}")
        budget = int(round(labeled * n_train))
    else:
        budget = int(labeled)
    if budget < len(classes) or budget > n_train:
        raise ValueError(
            f"labeled budget must be between {len(classes)} (one per class) and the train size "
            f"{n_train}, got {labeled}"
        )
    lab_targets = _even(budget, classes)
    train_per_class = Counter(labels[i] for g in train_groups for i in g)
    for c, t in lab_targets.items():
        if t > train_per_class[c]:
            raise ValueError(
                f"labeled budget {budget} asks {t} images of class {c!r}, but its train part "
                f"has only {train_per_class[c]}"
            )
    lab_groups, unl_groups = _take(train_groups, labels, lab_targets)

    def ids(gs: list[list[int]]) -> tuple[str, ...]:
        return tuple(sorted(records[i].id for g in gs for i in g))

    meta = {
        "seed": seed,
        "labeled": labeled,
        "test_fraction": test_fraction,
        "max_distance": max_distance,
        "classes": classes,
        "groups_with_duplicates": sum(1 for g in groups if len(g) > 1),
    }
    return Split(ids(lab_groups), ids(unl_groups), ids(test_groups), meta)


__all__ = ["Split", "make_split", "duplicate_groups", "perceptual_hashes"]
