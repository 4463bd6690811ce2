"""``inter_task_attention`` on Triton: custom ops ``hermes::triton_inter_task_attention_fwd`` / ``_bwd``, autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from hermes.kernels import inter_task_attention as K
from hermes.ops.triton_backend._common import (
    HALF_AND_FLOAT,
    device_reasons,
    dtype_reasons,
    launch_device,
)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.library.custom_op("hermes::triton_inter_task_attention_fwd", mutates_args=())
def inter_task_attention_fwd(
    cls_feature: Tensor, gate: Tensor, spatial_weight: Tensor, spatial_bias: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shapes: cls_feature (B, C, H, W), gate (B, C), spatial_weight (1, 2, K, K), spatial_bias
    (1,), all contiguous. Returns y (B, C, H, W) in the feature's dtype, and for the backward
    pass the pooled maps (B, 2, H, W), the ties at the max (B, H, W) and the gate a (B, H, W), fp32.
    """
    b, c, h, w = cls_feature.shape
    dev = cls_feature.device
    y = torch.empty_like(cls_feature)
    pooled = torch.empty(b, 2, h, w, dtype=torch.float32, device=dev)
    cnt = torch.empty(b, h, w, dtype=torch.float32, device=dev)
    a = torch.empty(b, h, w, dtype=torch.float32, device=dev)
    if y.numel() > 0:
        block_c, block_p = K.block_sizes(c, h * w)
        grid = (_cdiv(h * w, block_p), b)  # pixel blocks on axis 0 (axis 1 stops at 65535)
        with launch_device(cls_feature):
            K.inter_task_attention_pool_kernel[grid](
                cls_feature,
                gate,
                pooled,
                cnt,
                c,
                h * w,
                BLOCK_C=block_c,
                BLOCK_P=block_p,
                num_warps=K.NUM_WARPS,
            )
        with launch_device(cls_feature):
            K.inter_task_attention_apply_kernel[grid](
                cls_feature,
                gate,
                spatial_weight,
                spatial_bias,
                pooled,
                a,
                y,
                c,
                h,
                w,
                KSIZE=spatial_weight.shape[-1],
                BLOCK_C=block_c,
                BLOCK_P=block_p,
                num_warps=K.NUM_WARPS,
            )
    return y, pooled, cnt, a


@inter_task_attention_fwd.register_fake
def _(cls_feature, gate, spatial_weight, spatial_bias):
    b, _, h, w = cls_feature.shape
    f32 = dict(dtype=torch.float32)
    return (
        torch.empty_like(cls_feature),
        cls_feature.new_empty((b, 2, h, w), **f32),
        cls_feature.new_empty((b, h, w), **f32),
        cls_feature.new_empty((b, h, w), **f32),
    )


@torch.library.custom_op("hermes::triton_inter_task_attention_bwd", mutates_args=())
def inter_task_attention_bwd(
    grad_y: Tensor,
    cls_feature: Tensor,
    gate: Tensor,
    spatial_weight: Tensor,
    pooled: Tensor,
    cnt: Tensor,
    a: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients for cls_feature, gate, spatial_weight and spatial_bias, each in its dtype."""
    b, c, h, w = cls_feature.shape
    k = spatial_weight.shape[-1]
    dev = cls_feature.device
    dx = torch.empty_like(cls_feature)
    block_c, block_p = K.block_sizes(c, h * w)
    n_blocks = _cdiv(h * w, block_p)
    dz = torch.empty(b, h * w, dtype=torch.float32, device=dev)
    dwb = torch.zeros(b * n_blocks, 2 * k * k + 1, dtype=torch.float32, device=dev)
    dg = torch.zeros(b, n_blocks, c, dtype=torch.float32, device=dev)
    if dx.numel() > 0:
        grid = (n_blocks, b)  # pixel blocks on axis 0 (axis 1 stops at 65535)
        with launch_device(grad_y):
            K.inter_task_attention_bwd_gate_kernel[grid](
                grad_y,
                cls_feature,
                gate,
                pooled,
                a,
                dz,
                dwb,
                c,
                h,
                w,
                KSIZE=k,
                BLOCK_C=block_c,
                BLOCK_P=block_p,
                num_warps=K.NUM_WARPS,
            )
        with launch_device(grad_y):
            K.inter_task_attention_bwd_feature_kernel[grid](
                grad_y,
                cls_feature,
                gate,
                spatial_weight,
                pooled,
                cnt,
                a,
                dz,
                dx,
                dg,
                c,
                h,
                w,
                KSIZE=k,
                BLOCK_C=block_c,
                BLOCK_P=block_p,
                num_warps=K.NUM_WARPS,
            )
    dwb = dwb.sum(dim=0)
    return (
        dx,
        dg.sum(dim=1).to(gate.dtype),
        dwb[:-1].reshape(spatial_weight.shape).to(spatial_weight.dtype),
        dwb[-1:].clone(),
    )


@inter_task_attention_bwd.register_fake
def _(grad_y, cls_feature, gate, spatial_weight, pooled, cnt, a):
    return (
        torch.empty_like(cls_feature),
        torch.empty_like(gate),
        torch.empty_like(spatial_weight),
        spatial_weight.new_empty((1,), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output) -> None:
    cls_feature, gate, spatial_weight, spatial_bias = inputs
    _, pooled, cnt, a = output
    ctx.save_for_backward(cls_feature, gate, spatial_weight, pooled, cnt, a)
    ctx.bias_dtype = spatial_bias.dtype


def _backward(ctx, grad_y, _grad_pooled, _grad_cnt, _grad_a):
    cls_feature, gate, spatial_weight, pooled, cnt, a = ctx.saved_tensors
    dx, dg, dw, db = inter_task_attention_bwd(
        grad_y.contiguous(), cls_feature, gate, spatial_weight, pooled, cnt, a
    )
    return dx, dg, dw, db.to(ctx.bias_dtype)


inter_task_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def inter_task_attention(
    cls_feature: Tensor, gate: Tensor, spatial_weight: Tensor, spatial_bias: Tensor
) -> Tensor:
    """The Triton implementation behind :func:`hermes.ops.inter_task_attention` (same arguments)."""
    y, _, _, _ = inter_task_attention_fwd(
        cls_feature.contiguous(),
        gate.contiguous(),
        spatial_weight.contiguous(),
        spatial_bias.contiguous(),
    )
    return y


def not_supported_reasons(
    cls_feature: Tensor, gate: Tensor, spatial_weight: Tensor, spatial_bias: Tensor, **_
) -> list[str]:
    """Why the Triton ``inter_task_attention`` cannot take these inputs (empty when it can)."""
    reasons = device_reasons(cls_feature, gate, spatial_weight, spatial_bias)
    reasons += dtype_reasons("cls_feature", cls_feature, HALF_AND_FLOAT)
    reasons += dtype_reasons("gate", gate, HALF_AND_FLOAT)
    reasons += dtype_reasons("spatial_weight", spatial_weight, HALF_AND_FLOAT)
    if spatial_weight.shape[-1] > K.MAX_KERNEL_SIZE:
        reasons.append(
            f"spatial kernel size {spatial_weight.shape[-1]} exceeds the maximum of {K.MAX_KERNEL_SIZE}"
        )
    return reasons
