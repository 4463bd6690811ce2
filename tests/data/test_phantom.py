"""Phantom: deterministic, cached, class balance as asked, BI-RADS class statistics measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hermes.data import phantom
from hermes.data.calibration import SHADOW_BELOW, lesion_stats
from hermes.data.phantom import PhantomConfig, ensure_phantom, generate, simulate
from hermes.data.readers import read_folder


def test_simulate_is_deterministic_and_well_formed() -> None:
    a_img, a_mask = simulate(np.random.default_rng([3, 1]), True, 96)
    b_img, b_mask = simulate(np.random.default_rng([3, 1]), True, 96)
    c_img, _ = simulate(np.random.default_rng([3, 2]), True, 96)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (96, 96) and a_img.dtype == np.float32
    assert 0.0 <= a_img.min() and a_img.max() <= 1.0 and a_img.std() > 0.05
    assert 0.003 < a_mask.mean() < 0.4


def test_generate_identical_files_and_balance(tmp_path: Path) -> None:
    cfg = PhantomConfig(size=8, image_size=48, malignant_fraction=0.25, seed=1)
    a, b = generate(cfg, tmp_path / "a"), generate(cfg, tmp_path / "b")
    for sub in ("images", "masks"):
        for f in sorted((a / sub).iterdir()):
            assert f.read_bytes() == (b / sub / f.name).read_bytes()
    records = read_folder(a)
    assert len(records) == 8
    assert sum(r.label == "malignant" for r in records) == 2


def test_cache_reused_and_keyed_by_params(tmp_path: Path, monkeypatch) -> None:
    cfg = PhantomConfig(size=4, image_size=32, seed=2)
    first = ensure_phantom(cfg, tmp_path)
    assert first == tmp_path / cfg.key() and (first / "labels.csv").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(phantom, "generate", fail)
    assert ensure_phantom(cfg, tmp_path) == first
    assert PhantomConfig(size=4, image_size=32, seed=3).key() != cfg.key()
    monkeypatch.setenv("HERMES_CACHE", str(tmp_path / "env"))
    assert phantom.cache_root() == tmp_path / "env"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.fixture(scope="module")
def class_stats() -> dict[bool, list]:
    """Statistics measured on generated images and masks, 40 per class at 128 px."""
    out: dict[bool, list] = {False: [], True: []}
    for i in range(80):
        malignant = bool(i % 2)
        image, mask = simulate(np.random.default_rng([11, i]), malignant, 128)
        out[malignant].append(lesion_stats(image, mask))
    return out


def _median(stats: list, key: str) -> float:
    vals = np.array([getattr(s, key) for s in stats], dtype=float)
    return float(np.nanmedian(vals))


def test_malignant_margins_less_circumscribed(class_stats) -> None:
    ben, mal = class_stats[False], class_stats[True]
    assert _median(mal, "solidity") < _median(ben, "solidity") - 0.04
    assert _median(mal, "roughness") > _median(ben, "roughness") + 0.2


def test_malignant_more_often_shadowed_and_less_parallel(class_stats) -> None:
    ben, mal = class_stats[False], class_stats[True]

    def rate(stats: list, pred) -> float:
        vals = [s.posterior for s in stats]
        return float(np.mean([pred(v) for v in vals if np.isfinite(v)]))

    assert rate(mal, lambda v: v < SHADOW_BELOW) > rate(ben, lambda v: v < SHADOW_BELOW) + 0.15
    assert rate(ben, lambda v: v > 1.2) > rate(mal, lambda v: v > 1.2)  # benign enhancement
    # benign masses parallel to the skin (wider than tall); malignant ones less so
    assert _median(ben, "aspect") > 1.2
    assert _median(ben, "aspect") > _median(mal, "aspect") + 0.1
    taller = [float(np.mean([s.aspect < 1.0 for s in st])) for st in (ben, mal)]
    assert taller[1] > taller[0]


def test_lesions_hypoechoic_in_both_classes(class_stats) -> None:
    for stats in class_stats.values():
        assert _median(stats, "contrast") < 0.8
