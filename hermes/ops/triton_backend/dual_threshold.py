"""``dual_threshold`` on Triton: custom ops ``hermes::triton_dual_threshold_pass1`` / ``_pass2``.

The class thresholds (after the public op's ``histogram_hook``, e.g. an all-reduce) are computed
between the two ops, on the device: nothing here synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hermes.kernels import dual_threshold as K
from hermes.ops.dual_threshold import ENTROPY_EPS, DualThresholdKernelOutput
from hermes.ops.triton_backend._common import device_reasons, dtype_reasons, launch_device


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.library.custom_op("hermes::triton_dual_threshold_pass1", mutates_args=())
def pass1(logits: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shapes: logits (B, C, S) contiguous, valid (B, S) bool or None.

    Returns labels (B, S) int64, confidence and entropy (B, S) fp32, histogram (C,) int64.
    """
    b, c, s = logits.shape
    dev = logits.device
    labels = torch.empty(b, s, dtype=torch.int64, device=dev)
    conf = torch.empty(b, s, dtype=torch.float32, device=dev)
    ent = torch.empty(b, s, dtype=torch.float32, device=dev)
    hist = torch.zeros(c, dtype=torch.int64, device=dev)
    e = b * s
    if e > 0:
        block_e, block_c = K.block_sizes(c)
        with launch_device(logits):
            K.dual_threshold_pass1_kernel[(_cdiv(e, block_e),)](
                logits,
                valid,
                labels,
                conf,
                ent,
                hist,
                e,
                c,
                s,
                ENTROPY_EPS,
                HAS_VALID=valid is not None,
                BLOCK_E=block_e,
                BLOCK_C=block_c,
            )
    return labels, conf, ent, hist


@pass1.register_fake
def _(logits, valid):
    b, c, s = logits.shape
    return (
        logits.new_empty((b, s), dtype=torch.int64),
        logits.new_empty((b, s), dtype=torch.float32),
        logits.new_empty((b, s), dtype=torch.float32),
        logits.new_empty((c,), dtype=torch.int64),
    )


@torch.library.custom_op("hermes::triton_dual_threshold_pass2", mutates_args=())
def pass2(
    labels: Tensor,
    confidence: Tensor,
    entropy: Tensor,
    valid: Tensor | None,
    thresholds: Tensor,
    eta: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Shapes: labels, confidence, entropy (B, S); valid (B, S) bool or None; thresholds (C,)
    fp32; eta (1,) fp32. Returns reliable (B, S) bool, kept counts (3, C) int64 (confident,
    certain, reliable) and the sums of confidence and entropy (2,) fp32 over valid entries."""
    c = thresholds.shape[0]
    dev = labels.device
    reliable = torch.empty(labels.shape, dtype=torch.uint8, device=dev)
    kept = torch.zeros(3, c, dtype=torch.int64, device=dev)
    sums = torch.zeros(2, dtype=torch.float32, device=dev)
    e = labels.numel()
    if e > 0:
        block_e, block_c = K.block_sizes(c)
        with launch_device(labels):
            K.dual_threshold_pass2_kernel[(_cdiv(e, block_e),)](
                labels,
                confidence,
                entropy,
                valid,
                thresholds,
                eta,
                reliable,
                kept,
                sums,
                e,
                c,
                HAS_VALID=valid is not None,
                BLOCK_E=block_e,
                BLOCK_C=block_c,
            )
    return reliable.view(torch.bool), kept, sums


@pass2.register_fake
def _(labels, confidence, entropy, valid, thresholds, eta):
    c = thresholds.shape[0]
    return (
        labels.new_empty(labels.shape, dtype=torch.bool),
        labels.new_empty((3, c), dtype=torch.int64),
        labels.new_empty((2,), dtype=torch.float32),
    )


def dual_threshold(
    logits: Tensor,
    *,
    valid: Tensor | None,
    eta: Tensor,
    thresholds: Callable[[Tensor], Tensor],
) -> DualThresholdKernelOutput:
    """The Triton passes behind :func:`hermes.ops.dual_threshold`.

    Shapes: logits (B, C, P) detached, valid (B, P) bool or ``None``, eta 0-dim fp32 on the
    logits' device; ``thresholds`` maps this call's (C,) histogram to the (C,) class thresholds
    between the two passes. Returns the kernels' outputs (see :class:`DualThresholdKernelOutput`).
    """
    x = logits.contiguous()
    v = None if valid is None else valid.contiguous()
    labels, conf, ent, hist = pass1(x, v)
    tau = thresholds(hist).contiguous()
    reliable, kept, sums = pass2(labels, conf, ent, v, tau, eta.reshape(1))
    return DualThresholdKernelOutput(labels, conf, ent, reliable, tau, hist, kept, sums)


def not_supported_reasons(logits: Tensor, valid: Tensor | None = None, **_) -> list[str]:
    """Why the Triton ``dual_threshold`` cannot take these inputs (empty when it can)."""
    reasons = device_reasons(logits, valid)
    reasons += dtype_reasons(
        "logits", logits, (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    )
    if logits.shape[1] > K.MAX_CLASSES:
        reasons.append(f"{logits.shape[1]} classes exceed the kernel's maximum of {K.MAX_CLASSES}")
    return reasons
