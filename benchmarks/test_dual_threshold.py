"""``dual_threshold``: every backend against the PyTorch reference (forward only: the op makes
pseudo-labels, which are targets, so nothing flows back through it).

The derived figure is GB/s over the bytes that any implementation must move: the logits read
once, and per sample or pixel the outputs written (int64 label, fp32 confidence, fp32 entropy,
bool reliable: 17 bytes); the (C,)-sized thresholds and statistics are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import harness
import pytest
import torch

from hermes.ops import dual_threshold, dual_threshold_reference

OP = "dual_threshold"
OUTPUT_BYTES_PER_ENTRY = 8 + 4 + 4 + 1
ETA = 0.75 * 0.6931  # eta(t) at the start of training, ln 2 classes


@dataclass(frozen=True)
class Shape:
    """Logits ``(b, c)`` (per sample, classification) or ``(b, c, hw, hw)`` (per pixel)."""

    b: int
    c: int
    hw: int | None = None

    @property
    def size(self) -> tuple[int, ...]:
        return (self.b, self.c) if self.hw is None else (self.b, self.c, self.hw, self.hw)

    @property
    def entries(self) -> int:
        return self.b * (1 if self.hw is None else self.hw * self.hw)

    @property
    def id(self) -> str:
        return "x".join(str(s) for s in self.size)


def shapes(device_type: str, large: bool) -> list[Shape]:
    """The method's sizes (classification 8 + 8 samples; segmentation at 128 px, the small
    configuration, and at 224 px); the GPU target B = 64, C = 2, 224 x 224."""
    if device_type == "cuda":
        return [Shape(16, 2), Shape(16, 2, 224), Shape(64, 2, 224)] + (
            [Shape(64, 4, 512)] if large else []
        )
    return [Shape(16, 2), Shape(16, 2, 128), Shape(16, 2, 224)] + (
        [Shape(64, 2, 224)] if large else []
    )


def dtypes(device_type: str) -> list[torch.dtype]:
    return [torch.float32, torch.float16] if device_type == "cuda" else [torch.float32]


@pytest.mark.parametrize("backend", harness.backends(OP))
def test_dual_threshold(benchmark: Any, backend: str, shape: Shape, dtype: torch.dtype) -> None:
    dev = harness.device()
    g = torch.Generator().manual_seed(0)
    logits = (3.0 * torch.randn(shape.size, generator=g)).to(dev, dtype)
    kwargs: dict[str, Any] = dict(eta=ETA, tau_max=0.95, tau_min=0.5, valid=None)

    if backend == harness.COMPILE:
        ref = harness.compiled(dual_threshold_reference)

        def call() -> Any:
            return ref(logits, **kwargs)
    else:
        reason = harness.skip_reason(
            OP, backend, dict(logits=logits, histogram_hook=None, **kwargs), dev
        )
        if reason is not None:
            pytest.skip(reason)

        def call() -> Any:
            return dual_threshold(logits, backend=backend, **kwargs)

    bytes_moved = logits.numel() * logits.element_size() + shape.entries * OUTPUT_BYTES_PER_ENTRY
    harness.run_case(
        benchmark,
        call,
        group=f"dual_threshold {shape.id} {harness.dtype_name(dtype)} fwd",
        dev=dev,
        extra=dict(
            op=OP,
            backend=backend,
            mode="fwd",
            shape=shape.id,
            dtype=harness.dtype_name(dtype),
            entries=shape.entries,
        ),
        work=dict(bytes=float(bytes_moved)),
    )
