"""Peak memory of ``supcon_loss`` (forward + backward) against N, for the reference, the fused
backends and pytorch-metric-learning, with the growth law fitted by ``report.py``.

The reference and pytorch-metric-learning hold N x N matrices (peak ~ N^2: log-log slope 2);
the fused backends keep O(N d) (slope ~1). Peak memory is the allocator's peak on a GPU and the
resident-set peak on the CPU (``harness.peak_memory``). ``torch.compile`` of the reference is left
out: it keeps the reference's N x N buffers, and recompiling at every N costs minutes.

Sizes are bounded for a shared CPU: N up to 8,192 for the backends that hold N x N matrices and
16,384 for the others (16,384 and 32,768 with ``--hermes-large``). A case is also skipped when it
would need more than half the available memory, or when its time, extrapolated as N^2 from the
last N measured for the same backend in this run, exceeds 60 s a call (300 s with
``--hermes-large``). Each backend's first size is warmed up; larger sizes are timed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import harness
import pytest
import torch
import torch.nn.functional as F

from hermes.ops import dispatch, supcon_loss

OP = "supcon_loss"
PML = "pytorch-metric-learning"
D = 128
CLASSES = 10
QUADRATIC = ("torch", PML)

# Seconds of one call at the largest N measured so far in this run, per backend.
_MEASURED: dict[str, tuple[int, float]] = {}


@dataclass(frozen=True)
class Shape:
    n: int

    @property
    def id(self) -> str:
        return f"N{self.n}"


def shapes(device_type: str, large: bool) -> list[Shape]:
    """N = 1024, 2048, ... up to :func:`largest_n` of the fused backends."""
    ns = [1024]
    while ns[-1] < largest_n(device_type, large, quadratic=False):
        ns.append(ns[-1] * 2)
    return [Shape(n) for n in ns]


def largest_n(device_type: str, large: bool, quadratic: bool) -> int:
    """CPU: 8,192 (quadratic) / 16,384 (fused), twice that with ``--hermes-large``. GPU: 65,536 /
    131,072, twice that with ``--hermes-large`` (the quadratic ones stop earlier when the memory
    check or an out-of-memory error says so)."""
    top = 8192 if device_type == "cpu" else 65536
    return top * (2 if large else 1) * (1 if quadratic else 2)


def dtypes(device_type: str) -> list[torch.dtype]:
    return [torch.float32]


@pytest.mark.parametrize("backend", [*dispatch.BACKENDS, PML])
def test_supcon_memory(
    benchmark: Any, backend: str, shape: Shape, dtype: torch.dtype, large: bool
) -> None:
    dev = harness.device()
    n = shape.n
    if backend in QUADRATIC:
        if n > largest_n(dev.type, large, quadratic=True):
            pytest.skip(
                f"{backend} holds N x N matrices: stops at N="
                f"{largest_n(dev.type, large, quadratic=True)} here (--hermes-large: larger)"
            )
        # about six N x N fp32 matrices at once (measured at N = 4096)
        harness.skip_unless_fits(6 * 4 * n**2, dev, f"{backend} at N={n}")
    budget_s = 300.0 if large else 60.0
    if backend in _MEASURED:
        last_n, last_s = _MEASURED[backend]
        predicted = last_s * (n / last_n) ** 2
        if predicted > budget_s:
            pytest.skip(
                f"{backend} at N={n}: predicted {predicted:.0f} s a call "
                f"(from {last_s:.1f} s at N={last_n}) exceeds the {budget_s:.0f} s budget"
            )

    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(n, D, generator=g), dim=1).to(dev, dtype).requires_grad_()
    labels = torch.randint(0, CLASSES, (n,), generator=g).to(dev)
    if backend == PML:
        from pytorch_metric_learning.losses import SupConLoss

        pml = SupConLoss(temperature=0.07)

        def loss() -> torch.Tensor:
            return pml(anchors, labels)
    else:
        inputs = dict(
            anchors=anchors,
            labels=labels,
            contrasts=None,
            contrast_labels=None,
            temperature=0.07,
            base_temperature=0.07,
            weights=None,
            denominator="all",
            reduction="mean",
            self_offset=None,
        )
        reason = harness.skip_reason(OP, backend, inputs, dev)
        if reason is not None:
            pytest.skip(reason)

        def loss() -> torch.Tensor:
            return supcon_loss(anchors, labels, backend=backend)

    def call() -> torch.Tensor:
        anchors.grad = None
        out = loss()
        out.backward()
        return out

    try:
        seconds = harness.run_case(
            benchmark,
            call,
            group=f"supcon memory fwd+bwd d{D} {harness.dtype_name(dtype)} {backend}",
            dev=dev,
            budget_s=0.0,
            max_rounds=1,
            warmup=backend not in _MEASURED,
            extra=dict(
                op=OP,
                backend=backend,
                mode="fwd+bwd",
                shape=shape.id,
                n=n,
                m=n,
                d=D,
                classes=CLASSES,
                dtype=harness.dtype_name(dtype),
                memory_scaling=True,
            ),
            work=dict(flop=float(3 * 2 * n * n * D)),
        )
    except torch.OutOfMemoryError as exc:
        pytest.skip(f"out of memory: {exc}".splitlines()[0])
    _MEASURED[backend] = (n, seconds)
