"""hermes.data.io: every storage format normalised alike; masks OR-combined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hermes.data.io import load_image, load_mask, load_masks


@pytest.fixture
def grey() -> np.ndarray:
    return (np.arange(24 * 20).reshape(24, 20) % 256).astype(np.uint8)


def test_grey_rgb_rgba_16bit_load_alike(tmp_path: Path, grey: np.ndarray) -> None:
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    rgba = np.concatenate([np.stack([grey] * 3, -1), np.full((24, 20, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "i16.png")  # 16-bit PNG
    with Image.open(tmp_path / "i16.png") as im:
        assert im.mode.startswith("I")  # really stored as 16-bit
    ref = load_image(tmp_path / "l.png")
    assert ref.shape == (3, 24, 20) and ref.dtype == torch.float32
    assert float(ref.min()) >= 0.0 and float(ref.max()) <= 1.0
    torch.testing.assert_close(ref[0], torch.from_numpy(grey).float() / 255)
    for name in ("rgb.png", "rgba.png", "i16.png"):
        torch.testing.assert_close(load_image(tmp_path / name), ref, atol=1e-6, rtol=0)


def test_masks_or_combined_and_binarised(tmp_path: Path) -> None:
    a = np.zeros((8, 8), np.uint8)
    a[:4] = 255
    b = np.zeros((8, 8), np.uint8)
    b[:, :2] = 1  # a 0/1 mask
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    m = load_masks([tmp_path / "a.png", tmp_path / "b.png"])
    assert m.dtype == torch.int64 and set(m.unique().tolist()) == {0, 1}
    assert int(m.sum()) == 32 + 16 - 8
    assert torch.equal(load_mask(tmp_path / "b.png"), torch.from_numpy(b.astype(np.int64)))


def test_unreadable_and_missing_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_image(tmp_path / "absent.png")


def test_mask_size_mismatch_between_masks(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x_mask.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "x_mask_1.png")
    with pytest.raises(ValueError, match="x_mask_1.png"):
        load_masks([tmp_path / "x_mask.png", tmp_path / "x_mask_1.png"])
