"""``inter_task_attention`` on ``hermes._C``: fake (meta) and autograd registrations of
``hermes::inter_task_attention_fwd`` / ``_bwd``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hermes.ops.cpp_backend._common import OPS, compute_dtype, float_input_reasons


@torch.library.register_fake("hermes::inter_task_attention_fwd")
def _fwd_fake(x, gate, weight, bias):
    # the saved pooled maps and attention are in the op-math type (fp32 for fp16/bf16)
    b, _, h, w = x.shape
    acc = compute_dtype(x.dtype)
    return (
        torch.empty_like(x),
        x.new_empty((b, 2, h, w), dtype=acc),
        x.new_empty((b, h, w), dtype=acc),
    )


@torch.library.register_fake("hermes::inter_task_attention_bwd")
def _bwd_fake(grad_y, x, gate, weight, pooled, attention):
    return (
        torch.empty_like(x),
        torch.empty_like(gate),
        torch.empty_like(weight),
        weight.new_empty((1,)),
    )


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, gate, weight, _ = inputs
    _, pooled, attention = output
    ctx.save_for_backward(x, gate, weight, pooled, attention)


def _backward(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple:
    x, gate, weight, pooled, attention = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    return OPS.inter_task_attention_bwd(grad_y.contiguous(), x, gate, weight, pooled, attention)


torch.library.register_autograd(
    "hermes::inter_task_attention_fwd", _backward, setup_context=_setup_context
)


def inter_task_attention(
    cls_feature: Tensor, gate: Tensor, spatial_weight: Tensor, spatial_bias: Tensor
) -> Tensor:
    """The ``hermes._C`` kernels behind :func:`hermes.ops.inter_task_attention`.

    Shapes: cls_feature (B, C, H, W) non-empty, gate (B, C), spatial_weight (1, 2, k, k),
    spatial_bias (1,). Returns (B, C, H, W) in the feature's dtype (fp16/bf16 computed in fp32,
    with the conv parameters in fp32).
    """
    dtype = cls_feature.dtype
    # CUDA takes the feature and gate in their dtype, the CPU kernels in fp32 (fp64 for fp64);
    # the conv parameters go in fp32 (fp64) on both
    params = compute_dtype(dtype)
    compute = dtype if cls_feature.is_cuda else params
    y, _, _ = OPS.inter_task_attention_fwd(
        cls_feature.to(compute),
        gate.to(compute),
        spatial_weight.to(params),
        spatial_bias.to(params),
    )
    return y.to(dtype)


def not_supported_reasons(device_type: str) -> Callable[..., list[str]]:
    """The dispatcher's ``not_supported_reasons`` for the ``device_type`` kernels."""
    return float_input_reasons(
        "inter_task_attention_fwd", device_type, "cls_feature", "a floating point feature"
    )
