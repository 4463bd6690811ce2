"""``dual_threshold`` on ``hermes._C``: fake (meta) registrations of
``hermes::dual_threshold_pass1`` / ``_pass2`` and the two passes with the thresholds between
them (the histogram hook runs between them). Nothing here synchronises with the host on CUDA."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hermes.ops.cpp_backend._common import OPS, device_reasons
from hermes.ops.dual_threshold import (
    DualThresholdOutput,
    DualThresholdStats,
    class_thresholds,
)


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
    eta: float | Tensor,
    tau_max: float = 0.95,
    tau_min: float = 0.5,
    valid: Tensor | None = None,
    histogram_hook: Callable[[Tensor], Tensor] | None = None,
) -> DualThresholdOutput:
    """``dual_threshold`` on ``hermes._C`` (same semantics as the reference).

    Shapes: logits (B, C) or (B, C, H, W); valid (B,) or (B, H, W) bool. The histogram hook is
    called between pass 1 and pass 2; nothing is synchronised with the host on CUDA.
    """
    x = logits.detach()
    b, c = x.shape[:2]
    out_shape = (b,) + tuple(x.shape[2:])
    p = math.prod(out_shape[1:])  # explicit: reshape cannot infer -1 for 0 elements
    x3 = x.reshape(b, c, p)
    v = (
        valid.reshape(b, p)
        if valid is not None
        else torch.empty(0, dtype=torch.bool, device=x.device)
    )
    labels, confidence, entropy, ok, histogram = OPS.dual_threshold_pass1(x3, v)
    global_histogram = histogram if histogram_hook is None else histogram_hook(histogram.clone())
    thresholds = class_thresholds(global_histogram.to(x.device), tau_max, tau_min)
    # a float eta is filled on the device (a kernel launch), never copied from the host: no
    # host synchronisation per call on CUDA
    if isinstance(eta, Tensor):
        eta_t = eta.to(device=x.device, dtype=torch.float32).reshape(())
    else:
        eta_t = torch.full((), float(eta), dtype=torch.float32, device=x.device)
    reliable, kept, sums = OPS.dual_threshold_pass2(
        labels, confidence, entropy, ok, thresholds, eta_t
    )
    total = histogram.clamp(min=1).float()
    count = histogram.sum().clamp(min=1).float()
    stats = DualThresholdStats(
        histogram=histogram,
        kept_confident=kept[0].float() / total,
        kept_certain=kept[1].float() / total,
        kept_reliable=kept[2].float() / total,
        mean_confidence=sums[0] / count,
        mean_entropy=sums[1] / count,
    )
    return DualThresholdOutput(
        labels.reshape(out_shape),
        confidence.reshape(out_shape),
        entropy.reshape(out_shape),
        reliable.reshape(out_shape),
        thresholds,
        stats,
    )


def not_supported_reasons(device_type: str) -> Callable[..., list[str]]:
    """The dispatcher's ``not_supported_reasons`` for the ``device_type`` kernels."""

    def reasons(logits: Tensor, **_: Any) -> list[str]:
        return device_reasons("dual_threshold_pass1", device_type, logits)

    return reasons
