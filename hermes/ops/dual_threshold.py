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

Every backend (the ``torch`` one is :func:`passes_reference`) runs the two passes only and
returns their raw outputs (:class:`DualThresholdKernelOutput`); :func:`dual_threshold` checks
the inputs, computes the class thresholds between the passes (after the histogram hook) and
assembles the statistics, once for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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


class DualThresholdKernelOutput(NamedTuple):
    """What every backend returns, on the logits' device, with the spatial dimensions flattened
    to P (P = 1 for (B, C) logits).

    ``labels`` (B, P) int64, ``confidence`` and ``entropy`` (B, P) fp32, ``reliable`` (B, P)
    bool; ``thresholds`` (C,) fp32, those the backend was given between its passes;
    ``histogram`` (C,) int64 of this call's valid pseudo-labels; ``kept`` (3, C) int64, per class
    the valid entries that pass the confidence threshold, the entropy threshold and both;
    ``sums`` (2,) fp32, the sums of confidence and of entropy over valid entries.
    """

    labels: Tensor
    confidence: Tensor
    entropy: Tensor
    reliable: Tensor
    thresholds: Tensor
    histogram: Tensor
    kept: Tensor
    sums: Tensor


def class_thresholds(histogram: Tensor, tau_max: float, tau_min: float) -> Tensor:
    """``tau_c = tau_max - (tau_max - tau_min) * (1 - r_c)`` from a (C,) histogram (fp32)."""
    r = histogram.float() / histogram.sum().clamp(min=1).float()
    return tau_max - (tau_max - tau_min) * (1.0 - r)


def passes_reference(
    logits: Tensor,
    *,
    valid: Tensor | None,
    eta: Tensor,
    thresholds: Callable[[Tensor], Tensor],
) -> DualThresholdKernelOutput:
    """The ``torch`` backend: both passes in PyTorch (see the module docstring).

    Shapes: logits (B, C, P), valid (B, P) bool or ``None``, eta 0-dim fp32; ``thresholds`` maps
    this call's (C,) histogram to the (C,) class thresholds between the passes.
    """
    x = logits.float().movedim(1, -1)  # (B, P, C)
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

    def per_class(hit: Tensor) -> Tensor:
        counts = torch.zeros(num_classes, dtype=torch.int64, device=x.device)
        return counts.index_add_(0, labels.reshape(-1), (hit & ok).reshape(-1).long())

    histogram = per_class(ok)
    tau = thresholds(histogram)
    confident = confidence > tau[labels]
    certain = entropy < eta
    reliable = confident & certain & ok
    kept = torch.stack([per_class(confident), per_class(certain), per_class(reliable)])
    sums = torch.stack(
        [torch.where(ok, confidence, 0.0).sum(), torch.where(ok, entropy, 0.0).sum()]
    )
    return DualThresholdKernelOutput(
        labels, confidence, entropy, reliable, tau, histogram, kept, sums
    )


dispatch.register("dual_threshold", "torch", passes_reference)


def _backend_inputs(
    logits: Tensor,
    eta: float | Tensor,
    tau_max: float,
    tau_min: float,
    valid: Tensor | None,
    histogram_hook: Callable[[Tensor], Tensor] | None,
) -> dict:
    """The keyword arguments every backend takes (see :func:`passes_reference`)."""
    x = logits.detach()
    b, c = x.shape[:2]
    p = math.prod(x.shape[2:])  # explicit: reshape cannot infer -1 for 0 elements

    def thresholds(histogram: Tensor) -> Tensor:
        hist = histogram if histogram_hook is None else histogram_hook(histogram.clone())
        return class_thresholds(hist.to(x.device), tau_max, tau_min)

    # a float eta is filled on the device (a kernel launch), never copied from the host: no
    # host synchronisation per call on CUDA
    if isinstance(eta, Tensor):
        eta_t = eta.detach().to(device=x.device, dtype=torch.float32).reshape(())
    else:
        eta_t = torch.full((), float(eta), dtype=torch.float32, device=x.device)
    return dict(
        logits=x.reshape(b, c, p),
        valid=None if valid is None else valid.reshape(b, p),
        eta=eta_t,
        thresholds=thresholds,
    )


def _output(out: DualThresholdKernelOutput, logits: Tensor) -> DualThresholdOutput:
    """The public result from a backend's outputs: the statistics, and the logits' shape."""
    total = out.histogram.clamp(min=1).float()
    count = out.histogram.sum().clamp(min=1).float()
    stats = DualThresholdStats(
        histogram=out.histogram,
        kept_confident=out.kept[0].float() / total,
        kept_certain=out.kept[1].float() / total,
        kept_reliable=out.kept[2].float() / total,
        mean_confidence=out.sums[0] / count,
        mean_entropy=out.sums[1] / count,
    )
    shape = (logits.shape[0], *logits.shape[2:])
    return DualThresholdOutput(
        out.labels.reshape(shape),
        out.confidence.reshape(shape),
        out.entropy.reshape(shape),
        out.reliable.reshape(shape),
        out.thresholds,
        stats,
    )


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
    inputs = _backend_inputs(logits, eta, tau_max, tau_min, valid, histogram_hook)
    return _output(passes_reference(**inputs), logits)


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
    inputs = _backend_inputs(logits, eta, float(tau_max), float(tau_min), valid, histogram_hook)
    impl = dispatch.select("dual_threshold", backend, logits.device, inputs)
    return _output(impl.fn(**inputs), logits)
