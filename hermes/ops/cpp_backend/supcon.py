"""``supcon_loss`` on ``hermes._C``: fake (meta) and autograd registrations of
``hermes::supcon_fwd`` / ``supcon_bwd``, and when the backend is chosen automatically."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hermes.ops import dispatch
from hermes.ops.cpp_backend._common import OPS, compute_dtype, float_input_reasons


@torch.library.register_fake("hermes::supcon_fwd")
def _supcon_fwd_fake(
    anchors,
    labels,
    contrasts,
    contrast_labels,
    temperature,
    base_temperature,
    self_offset,
    pos_plus_neg,
):
    n = anchors.shape[0]
    vec = anchors.new_empty(n)
    return vec, anchors.new_empty(n), anchors.new_empty(n), labels.new_empty(n)


@torch.library.register_fake("hermes::supcon_bwd")
def _supcon_bwd_fake(
    grad_loss,
    anchors,
    labels,
    contrasts,
    contrast_labels,
    lse,
    q,
    num_pos,
    temperature,
    base_temperature,
    self_offset,
    pos_plus_neg,
):
    return torch.empty_like(anchors), torch.empty_like(contrasts)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    anchors, labels, contrasts, contrast_labels, t, tb, self_offset, pnn = inputs
    _, lse, q, num_pos = output
    ctx.save_for_backward(anchors, labels, contrasts, contrast_labels, lse, q, num_pos)
    ctx.args = (t, tb, self_offset, pnn)


def _backward(ctx: Any, grad_loss: Tensor | None, *_: Any) -> tuple:
    anchors, labels, contrasts, contrast_labels, lse, q, num_pos = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros_like(lse)
    grad_a, grad_b = OPS.supcon_bwd(
        grad_loss.contiguous(),
        anchors,
        labels,
        contrasts,
        contrast_labels,
        lse,
        q,
        num_pos,
        *ctx.args,
    )
    return grad_a, None, grad_b, None, None, None, None, None


torch.library.register_autograd("hermes::supcon_fwd", _backward, setup_context=_setup_context)


def supcon_loss(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor | None,
    contrast_labels: Tensor | None,
    *,
    temperature: float,
    base_temperature: float,
    denominator: str,
    self_offset: int | None,
    fp32_precision: str = "ieee",
) -> tuple[Tensor, Tensor]:
    """The ``hermes._C`` kernels behind :func:`hermes.ops.supcon_loss`.

    The kernels multiply in IEEE fp32 (fp64 for fp64 features) whatever ``fp32_precision`` says;
    fp16/bf16 features are upcast to fp32 here.

    Shapes: anchors (N, d), labels (N,), contrasts (M, d), contrast_labels (M,).
    Returns the unweighted per-anchor loss (N,) (0 for an anchor without a positive; fp32, fp64
    for fp64 features) and the number of positives per anchor (N,) int64.
    """
    dtype = compute_dtype(anchors.dtype)
    a = anchors.to(dtype)
    if contrasts is None:
        b, yb, self_offset = a, labels, 0
    else:
        b, yb = contrasts.to(dtype), contrast_labels
    loss, _, _, num_pos = OPS.supcon_fwd(
        a, labels, b, yb, temperature, base_temperature, self_offset, denominator == "pos_plus_neg"
    )
    return loss, num_pos


def not_supported_reasons(device_type: str) -> Callable[..., list[str]]:
    """The dispatcher's ``not_supported_reasons`` for the ``device_type`` kernels."""
    return float_input_reasons("supcon_fwd", device_type, "anchors", "floating point features")


# Automatic use of the CPU kernels from this many anchor-contrast pairs on. Measured side by side
# (fwd + bwd, fp32, d = 128, "all", contrasts = anchors, best of 5-20, 2 shared AMD EPYC Zen 3
# cores under load, so +-30%): reference / cpp time = 0.83 (N = 16), 0.58 (128), 1.02 (256),
# 1.21 (512), 2.9 (1,024), 3.2 (4,096), 14 (16,384). Below 256 x 256 one small GEMM of the
# reference wins or ties; the reference's memory is no concern there.
CPU_MIN_PAIRS = 256 * 256

# Why the CUDA supcon_loss is not chosen automatically where Triton runs (see hermes.ops.dispatch).
CUDA_NOT_AUTO = (
    "the CUDA supcon_loss kernel has no data reuse (one block per anchor, no shared-memory "
    "tiling, no tensor cores): never chosen automatically where Triton runs on the device "
    "(backend='cuda' selects it)"
)


def cpu_auto_reasons(anchors: Tensor, contrasts: Tensor | None = None, **_: Any) -> list[str]:
    """Why the CPU kernels are not chosen automatically for these sizes (empty when they are)."""
    n = anchors.shape[0]
    m = n if contrasts is None else contrasts.shape[0]
    if n * m < CPU_MIN_PAIRS:
        return [f"the reference is as fast below {CPU_MIN_PAIRS} pairs (N*M = {n * m})"]
    return []


def cuda_auto_reasons(**_: Any) -> list[str]:
    """Why the CUDA kernel is not chosen automatically: whenever Triton is registered."""
    return [CUDA_NOT_AUTO] if dispatch.is_registered("supcon_loss", "triton") else []
