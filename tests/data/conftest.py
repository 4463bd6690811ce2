"""Tiny on-disk datasets in each layout, written into ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Binary disc mask (size, size) as uint8 0/255."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r).astype(np.uint8) * 255


def noise_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A distinct greyscale image (uint8): smooth random blobs, so perceptual hashes differ."""
    coarse = rng.random((4, 4))
    img = np.kron(coarse, np.ones((size // 4, size // 4)))
    return (img * 255).astype(np.uint8)


def write_busi(root: Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """BUSI layout: ``root/<class>/<class> (<i>).png`` and ``<stem>_mask.png``."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            stem = f"{cls} ({i})"
            Image.fromarray(noise_image(rng, size)).save(root / cls / f"{stem}.png")
            Image.fromarray(disc(size, size / 2, size / 2, size / 5)).save(
                root / cls / f"{stem}_mask.png"
            )
    return root


def write_folder(
    root: Path,
    labels: list[str],
    size: int = 32,
    images: str = "images",
    masks: str = "masks",
    csv_name: str = "labels.csv",
    header: str = "id,label",
    ids: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Generic layout: ``images/<id>.png``, ``masks/<id>.png`` and a CSV of labels."""
    rng = np.random.default_rng(seed)
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    ids = ids or [f"{i:06d}" for i in range(1, len(labels) + 1)]
    rows = [header]
    for sid, label in zip(ids, labels, strict=True):
        Image.fromarray(noise_image(rng, size)).save(root / images / f"{sid}.png")
        Image.fromarray(disc(size, size / 2, size / 2, size / 4)).save(root / masks / f"{sid}.png")
        rows.append(f"{sid},{label}")
    (root / csv_name).write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def busi_dir(tmp_path: Path) -> Path:
    return write_busi(tmp_path / "Dataset_BUSI_with_GT", {"benign": 6, "malignant": 4, "normal": 2})


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "generic", ["benign"] * 5 + ["malignant"] * 5)


@pytest.fixture
def make_busi():
    """Factory: ``make_busi(root, {"benign": n, ...}, size=32)`` writes a BUSI layout."""
    return write_busi


@pytest.fixture
def make_folder():
    """Factory: ``make_folder(root, labels, ...)`` writes the generic (or UDIAT) layout."""
    return write_folder
