"""Shared fixtures of the network tests: small inputs, a fixed seed."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def images() -> torch.Tensor:
    """(4, 3, 64, 64) ImageNet-normalised-like inputs."""
    return torch.randn(4, 3, 64, 64)
