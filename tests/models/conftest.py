"""Shared fixtures of the network tests: small inputs, a fixed seed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from hermes.models import ModelConfig


def _tiny(**overrides: object) -> ModelConfig:
    """The small preset's structure at a fraction of its widths, for fast tests."""
    widths = dict(
        seg_widths=(8, 16, 32, 64),
        seg_stem_width=8,
        cls_widths=(8, 16, 32, 64),
        cls_stem_width=8,
        decoder_channels=(16, 8, 8, 8, 8),
        embed_dim=16,
        proj_hidden=16,
        proj_dim=8,
        consistency_dim=16,
    )
    return ModelConfig(**{**widths, **overrides})


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """A fixed seed, and one intra-op thread: these shapes are small, and on a shared 2-core
    machine two OpenMP threads waiting on each other made a step 30x slower (measured)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def images() -> torch.Tensor:
    """(4, 3, 64, 64) ImageNet-normalised-like inputs."""
    return torch.randn(4, 3, 64, 64)


@pytest.fixture
def tiny() -> Callable[..., ModelConfig]:
    """``tiny(**overrides)``: a :class:`ModelConfig` with the small structure, tiny widths."""
    return _tiny
