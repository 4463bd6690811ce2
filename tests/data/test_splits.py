"""Splits: disjoint, reproducible, stratified, duplicates kept together, budgets met."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from hermes.data.readers import Record
from hermes.data.splits import Split, duplicate_groups, make_split


def fake_records(n_benign: int, n_malignant: int) -> list[Record]:
    labels = ["benign"] * n_benign + ["malignant"] * n_malignant
    return [
        Record(f"s{i:03d}", Path(f"s{i:03d}.png"), (Path(f"m{i:03d}.png"),), lab)
        for i, lab in enumerate(labels)
    ]


def dup_groups(n: int, rng: np.random.Generator) -> list[list[int]]:
    """Random groups: about a fifth of the samples in pairs or triples."""
    order = rng.permutation(n).tolist()
    groups, k = [], 0
    while k < n:
        size = int(rng.choice([1, 1, 1, 1, 1, 1, 2, 3]))
        groups.append(order[k : k + size])
        k += size
    return groups


def parts(split: Split) -> list[set[str]]:
    return [set(split.labeled), set(split.unlabeled), set(split.test)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_protocol_properties(seed: int) -> None:
    records = fake_records(219, 105)
    labels = {r.id: r.label for r in records}
    # a group spanning classes, as BUSI has
    groups = dup_groups(len(records), np.random.default_rng(seed)) + [[]]
    split = make_split(records, 72, 0.3, seed, groups=[g for g in groups if g])
    lab, unl, test = parts(split)
    assert not (lab & unl) and not (lab & test) and not (unl & test)
    assert lab | unl | test == set(labels)
    # budget met exactly, half per class
    assert Counter(labels[i] for i in lab) == {"benign": 36, "malignant": 36}
    # per class 30% test (exact: singletons fill the gaps left by groups)
    assert Counter(labels[i] for i in test) == {"benign": 66, "malignant": 32}
    # every duplicate group on one side of every split
    for g in groups:
        ids = {records[i].id for i in g}
        assert sum(bool(ids & p) for p in (lab, unl, test)) <= 1


def test_reproducible_and_seed_dependent() -> None:
    records = fake_records(40, 30)
    a = make_split(records, 10, seed=3, max_distance=-1)
    b = make_split(records, 10, seed=3, max_distance=-1)
    c = make_split(records, 10, seed=4, max_distance=-1)
    assert a == b
    assert parts(a) != parts(c)


def test_fraction_budget_and_errors() -> None:
    records = fake_records(40, 30)
    split = make_split(records, 0.2, max_distance=-1)  # 49 train images -> 10 labeled
    assert len(split.train) == 49 and len(split.labeled) == 10
    with pytest.raises(ValueError, match="labeled fraction"):
        make_split(records, 1.5, max_distance=-1)
    with pytest.raises(ValueError, match="class 'malignant'"):
        make_split(records, 46, max_distance=-1)  # 23 malignant asked, 21 in train
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(records, 10, test_fraction=1.0, max_distance=-1)


def test_save_load_roundtrip_and_validation(tmp_path: Path) -> None:
    records = fake_records(20, 20)
    split = make_split(records, 8, seed=5, max_distance=-1)
    split.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert parts(loaded) == parts(split) and loaded.meta["seed"] == 5
    loaded.check(records)
    with pytest.raises(ValueError, match="not in the dataset"):
        loaded.check(records[:10])
    payload = json.loads((tmp_path / "split.json").read_text())
    payload["test"].append(payload["labeled"][0])
    (tmp_path / "bad.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="more than one part"):
        Split.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        Split.load(tmp_path / "absent.json")


def test_perceptual_duplicates_found_and_kept_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        base = ndimage.gaussian_filter(rng.random((96, 96)), 4)
        base = (base - base.min()) / (base.max() - base.min())
        copies = [base]
        if i < 4:  # a near-duplicate: darker, mild noise, shifted by a pixel
            copies.append(np.roll(base * 0.9 + 0.03 * rng.random(base.shape), 1, axis=1))
        for k, img in enumerate(copies):
            path = tmp_path / f"im{i}_{k}.png"
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
            label = "benign" if i % 2 == 0 else "malignant"
            records.append(Record(f"im{i}_{k}", path, (path,), label))
    groups = duplicate_groups(records, max_distance=10)
    pairs = sorted(tuple(records[j].id for j in g) for g in groups if len(g) > 1)
    assert pairs == [(f"im{i}_0", f"im{i}_1") for i in range(4)]
    split = make_split(records, 8, 0.3, seed=1)
    for a, b in pairs:
        assert [a in p for p in parts(split)] == [b in p for p in parts(split)]
