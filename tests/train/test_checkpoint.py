"""Checkpoints hold tensors and plain Python values only: ``torch.load(weights_only=True)``."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from hermes.train.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)


def _draws() -> tuple[list[float], list[float], float]:
    # numpy's randn starts with the cached second Gaussian when there is one
    return torch.rand(3).tolist(), np.random.randn(3).tolist(), random.random()


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian: has_gauss and cached_gaussian are in the state
    path = tmp_path / "rng.pt"
    atomic_save({"rng": rng_state()}, path)
    expected = _draws()
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert _draws() == expected


def test_checkpoints_written_with_numpy_state_still_load(tmp_path: Path) -> None:
    """Checkpoints made before the RNG state became plain hold numpy's own tuple."""
    np.random.seed(5)
    path = tmp_path / "old.pt"
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    atomic_save({"format": FORMAT_VERSION, "rng": state}, path)
    expected = _draws()
    set_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == expected
