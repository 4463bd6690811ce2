"""Dual-threshold pseudo-labels: class-wise adaptive confidence AND entropy thresholds.

Semantics (the Hermes paper's dual threshold): on the softmax ``p`` of the logits, per sample (B, C) or per
pixel (B, C, H, W): ``label = argmax p``, ``confidence = max p``,
``entropy = -sum_c p_c log(p_c + 1e-6)``; with ``r_c`` the fraction of the (valid) pseudo-labels
equal to ``c``, ``tau_c = tau_max - (tau_max - tau_min) * (1 - r_c)``; an entry is *reliable*
when ``confidence > tau_label`` and ``entropy < eta`` and it is valid.

Entries outside ``valid``, and entries with any non-finite logit, take no part: they are never
reliable and are left out of the histogram and the statistics. A non-finite entry gets
label 0 and NaN confidence and entropy. This holds alike in every backend.

Every backend accepts empty inputs (B = 0, or H or W = 0): empty outputs, an empty histogram,
thresholds at ``tau_min`` and zero statistics. C = 0 (no class) is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hermes.ops import dispatch

ENTROPY_EPS = 1e-6


@dataclass
class DualThresholdStats:
    """Per-step statistics, all tensors on the logits' device (no host synchronisation).

    ``histogram`` (C,) int64 counts of this call's valid pseudo-labels (before any all-reduce);
    ``kept_confident``, ``kept_certain``, ``kept_reliable`` (C,) fp32: the fraction of class ``c``'s
    valid entries that pass the confidence threshold, the entropy threshold, and both (0 where
    the class is absent); ``mean_confidence``, ``mean_entropy``: 0-dim fp32 over valid entries.
    """

    histogram: Tensor
    kept_confident: Tensor
    kept_certain: Tensor
    kept_reliable: Tensor
    mean_confidence: Tensor
    mean_entropy: Tensor


@dataclass
class DualThresholdOutput:
    """``labels`` int64, ``confidence`` and ``entropy`` fp32, ``reliable`` bool, all of the
    logits' shape without the class dimension; ``thresholds`` (C,) fp32; ``stats``."""

    labels: Tensor
    confidence: Tensor
    entropy: Tensor
    reliable: Tensor
    thresholds: Tensor
    stats: DualThresholdStats


def class_thresholds(histogram: Tensor, tau_max: float, tau_min: float) -> Tensor:
    """``tau_c = tau_max - (tau_max - tau_min) * (1 - r_c)`` from a (C,) histogram (fp32)."""
    r = histogram.float() / histogram.sum().clamp(min=1).float()
    return tau_max - (tau_max - tau_min) * (1.0 - r)


def class_fractions(hit: Tensor, labels: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Per class, the fraction of valid entries of that label where ``hit`` holds (fp32, (C,))."""
    idx = labels.reshape(-1)
    v = valid.reshape(-1).float()
    total = torch.zeros(num_classes, device=labels.device).index_add_(0, idx, v)
    kept = torch.zeros(num_classes, device=labels.device).index_add_(
        0, idx, v * hit.reshape(-1).float()
    )
    return kept / total.clamp(min=1)


def dual_threshold_reference(
    logits: Tensor,
    *,
    eta: float | Tensor,
    tau_max: float = 0.95,
    tau_min: float = 0.5,
    valid: Tensor | None = None,
    histogram_hook: Callable[[Tensor], Tensor] | None = None,
) -> DualThresholdOutput:
    """Reference implementation (see the module docstring). Shapes: logits (B, C) or
    (B, C, H, W); valid (B,) or (B, H, W) bool. No gradient flows (pseudo-labels are targets)."""
    x = logits.detach().float().movedim(1, -1)  # (..., C)
    num_classes = x.shape[-1]
    finite = torch.isfinite(x).all(dim=-1)
    p = torch.softmax(x, dim=-1)
    confidence, labels = p.max(dim=-1)
    entropy = -(p * torch.log(p + ENTROPY_EPS)).sum(dim=-1)
    nan = torch.tensor(float("nan"), device=x.device)
    labels = torch.where(finite, labels, torch.zeros_like(labels))
    confidence = torch.where(finite, confidence, nan)
    entropy = torch.where(finite, entropy, nan)
    ok = finite if valid is None else finite & valid

    histogram = torch.zeros(num_classes, dtype=torch.int64, device=x.device)
    histogram.index_add_(0, labels.reshape(-1), ok.reshape(-1).long())
    global_histogram = histogram if histogram_hook is None else histogram_hook(histogram.clone())
    thresholds = class_thresholds(global_histogram, tau_max, tau_min)

    confident = confidence > thresholds[labels]
    certain = entropy < eta
    reliable = confident & certain & ok

    okf = ok.float()
    count = okf.sum().clamp(min=1)
    stats = DualThresholdStats(
        histogram=histogram,
        kept_confident=class_fractions(confident, labels, ok, num_classes),
        kept_certain=class_fractions(certain, labels, ok, num_classes),
        kept_reliable=class_fractions(reliable, labels, ok, num_classes),
        mean_confidence=torch.where(ok, confidence, 0.0).sum() / count,
        mean_entropy=torch.where(ok, entropy, 0.0).sum() / count,
    )
    return DualThresholdOutput(labels, confidence, entropy, reliable, thresholds, stats)


dispatch.register("dual_threshold", "torch", dual_threshold_reference)


def dual_threshold(
    logits: Tensor,
    *,
    eta: float | Tensor,
    tau_max: float = 0.95,
    tau_min: float = 0.5,
    valid: Tensor | None = None,
    backend: str | None = None,
    histogram_hook: Callable[[Tensor], Tensor] | None = None,
) -> DualThresholdOutput:
    """Pseudo-labels, reliable mask, thresholds and statistics in one call.

    Args:
        logits: (B, C) or (B, C, H, W), any float dtype; treated as detached.
        eta: entropy threshold in nats (float or 0-dim tensor on any device).
        tau_max, tau_min: bounds of the class-wise confidence threshold, 0 <= tau_min <= tau_max <= 1.
        valid: (B,) or (B, H, W) bool: entries that take part (histogram included).
        backend: ``None`` (automatic), ``"torch"``, ``"triton"``, ``"cpp"`` or ``"cuda"``.
        histogram_hook: called with this call's (C,) int64 histogram between the two passes and
            returning the histogram the thresholds are computed from, e.g. an all-reduce under
            data parallelism so that every rank uses the global batch's thresholds.

    Returns:
        :class:`DualThresholdOutput` (see the module docstring for the semantics).
    """
    if logits.dim() not in (2, 4):
        raise ValueError(
            f"dual_threshold: logits must be (B, C) or (B, C, H, W), got shape {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"dual_threshold: logits must be floating point, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError("dual_threshold: logits need at least one class")
    if not 0.0 <= tau_min <= tau_max <= 1.0:
        raise ValueError(
            f"dual_threshold: need 0 <= tau_min <= tau_max <= 1, got tau_min={tau_min}, tau_max={tau_max}"
        )
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if valid is not None and (tuple(valid.shape) != expected or valid.dtype != torch.bool):
        raise ValueError(
            f"dual_threshold: valid must be a bool tensor of shape {expected}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    if isinstance(eta, Tensor) and eta.numel() != 1:
        raise ValueError(f"dual_threshold: eta must be a scalar, got shape {tuple(eta.shape)}")
    inputs = dict(
        logits=logits,
        eta=eta,
        tau_max=float(tau_max),
        tau_min=float(tau_min),
        valid=valid,
        histogram_hook=histogram_hook,
    )
    impl = dispatch.select("dual_threshold", backend, logits.device, inputs)
    return impl.fn(**inputs)
