"""``dual_threshold`` on ``hermes._C``: fake (meta) registrations of
``hermes::dual_threshold_pass1`` / ``_pass2`` and the two passes with the thresholds between
them. Nothing here synchronises with the host on CUDA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hermes.ops.cpp_backend._common import OPS, device_reasons
from hermes.ops.dual_threshold import DualThresholdKernelOutput


@torch.library.register_fake("hermes::dual_threshold_pass1")
def _pass1_fake(logits, valid):
    b, c, p = logits.shape
    f32 = logits.new_empty((b, p), dtype=torch.float32)
    return (
        logits.new_empty((b, p), dtype=torch.int64),
        f32,
        torch.empty_like(f32),
        logits.new_empty((b, p), dtype=torch.bool),
        logits.new_empty((c,), dtype=torch.int64),
    )


@torch.library.register_fake("hermes::dual_threshold_pass2")
def _pass2_fake(labels, confidence, entropy, ok, thresholds, eta):
    c = thresholds.shape[0]
    return (
        torch.empty_like(ok),
        labels.new_empty((3, c)),
        confidence.new_empty((2,), dtype=torch.float32),
    )


def dual_threshold(
    logits: Tensor,
    *,
    valid: Tensor | None,
    eta: Tensor,
    thresholds: Callable[[Tensor], Tensor],
) -> DualThresholdKernelOutput:
    """The ``hermes._C`` passes behind :func:`hermes.ops.dual_threshold`.

    Shapes: logits (B, C, P) detached, valid (B, P) bool or ``None``, eta 0-dim fp32 on the
    logits' device; ``thresholds`` maps this call's (C,) histogram to the (C,) class thresholds
    between the two passes. Returns the kernels' outputs (see :class:`DualThresholdKernelOutput`).
    """
    v = valid if valid is not None else torch.empty(0, dtype=torch.bool, device=logits.device)
    labels, confidence, entropy, ok, histogram = OPS.dual_threshold_pass1(logits, v)
    tau = thresholds(histogram)
    reliable, kept, sums = OPS.dual_threshold_pass2(labels, confidence, entropy, ok, tau, eta)
    return DualThresholdKernelOutput(
        labels, confidence, entropy, reliable, tau, histogram, kept, sums
    )


def not_supported_reasons(device_type: str) -> Callable[..., list[str]]:
    """The dispatcher's ``not_supported_reasons`` for the ``device_type`` kernels."""

    def reasons(logits: Tensor, **_: Any) -> list[str]:
        return device_reasons("dual_threshold_pass1", device_type, logits)

    return reasons
