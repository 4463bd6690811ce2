"""The ``cpp`` (CPU) and ``cuda`` backends: Python glue of the compiled extension ``hermes._C``.

Importing this module loads ``hermes._C`` (which registers the ``torch.ops.hermes.*`` operators
for the CPU and, when built with CUDA, the CUDA dispatch keys), registers their autograd and
fake (meta) implementations, and registers each op with :mod:`hermes.ops.dispatch`. Without the
extension the import fails and the dispatcher reports the backend unavailable once.

Dtypes: the CPU kernels compute in fp32 (fp64 inputs in fp64); fp16/bf16 inputs are upcast to
fp32 here and the results cast back where the reference returns the input's dtype
(``inter_task_attention``). ``supcon_loss`` returns fp32 as the reference does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import hermes._C  # noqa: F401  (registers torch.ops.hermes.*)
from hermes.ops import dispatch
from hermes.ops.dual_threshold import (
    DualThresholdOutput,
    DualThresholdStats,
    class_thresholds,
)
from hermes.ops.inter_task_attention import inter_task_attention_reference
from hermes.ops.supcon import nonfinite_to_nan

logger = logging.getLogger("hermes.ops")

_OPS = torch.ops.hermes


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``hermes::<op>`` has a kernel for ``device_type`` ("cpu" or "cuda") in this build."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"hermes::{op}", key)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# supcon_loss
# --------------------------------------------------------------------------------------------


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


def _supcon_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    anchors, labels, contrasts, contrast_labels, t, tb, self_offset, pnn = inputs
    _, lse, q, num_pos = output
    ctx.save_for_backward(anchors, labels, contrasts, contrast_labels, lse, q, num_pos)
    ctx.args = (t, tb, self_offset, pnn)


def _supcon_backward(ctx: Any, grad_loss: Tensor | None, *_: Any) -> tuple:
    anchors, labels, contrasts, contrast_labels, lse, q, num_pos = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros_like(lse)
    grad_a, grad_b = _OPS.supcon_bwd(
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


torch.library.register_autograd(
    "hermes::supcon_fwd", _supcon_backward, setup_context=_supcon_setup_context
)


def supcon_loss_cpp(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor | None = None,
    contrast_labels: Tensor | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    weights: Tensor | None = None,
    denominator: str = "all",
    reduction: str = "mean",
    self_offset: int | None = None,
    fp32_precision: str = "ieee",
) -> Tensor:
    """``supcon_loss`` on ``hermes._C`` (same arguments and semantics as the reference).

    The kernels multiply in IEEE fp32 (fp64 for fp64) whatever ``fp32_precision`` says.

    Shapes: anchors (N, d), labels (N,), contrasts (M, d), contrast_labels (M,), weights (N,).
    Returns (N,) or a 0-dim fp32 tensor.
    """
    dtype = _compute_dtype(anchors.dtype)
    a = anchors.to(dtype)
    if contrasts is None:
        b, yb, self_offset = a, labels, 0
    else:
        b, yb = contrasts.to(dtype), contrast_labels
    loss, _, _, num_pos = _OPS.supcon_fwd(
        a, labels, b, yb, temperature, base_temperature, self_offset, denominator == "pos_plus_neg"
    )
    loss = nonfinite_to_nan(loss.float(), a, b)
    if weights is not None:
        loss = loss * weights.float()
    if reduction == "none":
        return loss
    return loss.sum() / (num_pos > 0).sum().clamp(min=1)


def _supcon_reasons(device_type: str) -> Callable[..., list[str]]:
    def reasons(anchors: Tensor, contrasts: Tensor | None = None, **_: Any) -> list[str]:
        out = []
        if anchors.device.type != device_type:
            out.append(f"needs {device_type} tensors, got {anchors.device.type}")
        elif not has_kernel("supcon_fwd", device_type):
            out.append(f"hermes._C was built without {device_type} kernels")
        if not anchors.is_floating_point():
            out.append(f"needs floating point features, got {anchors.dtype}")
        return out

    return reasons


def _supcon_auto_reasons(anchors: Tensor, contrasts: Tensor | None = None, **_: Any) -> list[str]:
    n = anchors.shape[0]
    m = n if contrasts is None else contrasts.shape[0]
    if n * m < _SUPCON_CPU_MIN_PAIRS:
        return [f"the reference is as fast below {_SUPCON_CPU_MIN_PAIRS} pairs (N*M = {n * m})"]
    return []


# Automatic use of the CPU kernels from this many anchor-contrast pairs on. Measured side by side
# (fwd + bwd, fp32, d = 128, "all", contrasts = anchors, best of 5-20, 2 shared AMD EPYC Zen 3
# cores under load, so +-30%): reference / cpp time = 0.83 (N = 16), 0.58 (128), 1.02 (256),
# 1.21 (512), 2.9 (1,024), 3.2 (4,096), 14 (16,384). Below 256 x 256 one small GEMM of the
# reference wins or ties; the reference's memory is no concern there.
_SUPCON_CPU_MIN_PAIRS = 256 * 256

# Why the CUDA supcon_loss is not chosen automatically where Triton runs (see hermes.ops.dispatch).
CUDA_SUPCON_NOT_AUTO = (
    "the CUDA supcon_loss kernel has no data reuse (one block per anchor, no shared-memory "
    "tiling, no tensor cores): never chosen automatically where Triton runs on the device "
    "(backend='cuda' selects it)"
)


def _supcon_cuda_auto_reasons(**_: Any) -> list[str]:
    return [CUDA_SUPCON_NOT_AUTO] if dispatch.is_registered("supcon_loss", "triton") else []


dispatch.register(
    "supcon_loss", "cpp", supcon_loss_cpp, _supcon_reasons("cpu"), _supcon_auto_reasons
)
dispatch.register(
    "supcon_loss", "cuda", supcon_loss_cpp, _supcon_reasons("cuda"), _supcon_cuda_auto_reasons
)


# --------------------------------------------------------------------------------------------
# dual_threshold (two ops; the histogram hook runs between them)
# --------------------------------------------------------------------------------------------


@torch.library.register_fake("hermes::dual_threshold_pass1")
def _dual_threshold_pass1_fake(logits, valid):
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
def _dual_threshold_pass2_fake(labels, confidence, entropy, ok, thresholds, eta):
    c = thresholds.shape[0]
    return (
        torch.empty_like(ok),
        labels.new_empty((3, c)),
        confidence.new_empty((2,), dtype=torch.float32),
    )


def dual_threshold_cpp(
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
    labels, confidence, entropy, ok, histogram = _OPS.dual_threshold_pass1(x3, v)
    global_histogram = histogram if histogram_hook is None else histogram_hook(histogram.clone())
    thresholds = class_thresholds(global_histogram.to(x.device), tau_max, tau_min)
    # a float eta is filled on the device (a kernel launch), never copied from the host: no
    # host synchronisation per call on CUDA
    if isinstance(eta, Tensor):
        eta_t = eta.to(device=x.device, dtype=torch.float32).reshape(())
    else:
        eta_t = torch.full((), float(eta), dtype=torch.float32, device=x.device)
    reliable, kept, sums = _OPS.dual_threshold_pass2(
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


def _device_reasons(op: str, device_type: str, tensor: Tensor) -> list[str]:
    if tensor.device.type != device_type:
        return [f"needs {device_type} tensors, got {tensor.device.type}"]
    if not has_kernel(op, device_type):
        return [f"hermes._C was built without {device_type} kernels"]
    return []


def _dual_threshold_reasons(device_type: str) -> Callable[..., list[str]]:
    def reasons(logits: Tensor, **_: Any) -> list[str]:
        return _device_reasons("dual_threshold_pass1", device_type, logits)

    return reasons


dispatch.register("dual_threshold", "cpp", dual_threshold_cpp, _dual_threshold_reasons("cpu"))
dispatch.register("dual_threshold", "cuda", dual_threshold_cpp, _dual_threshold_reasons("cuda"))


# --------------------------------------------------------------------------------------------
# inter_task_attention
# --------------------------------------------------------------------------------------------


@torch.library.register_fake("hermes::inter_task_attention_fwd")
def _ita_fwd_fake(x, gate, weight, bias):
    b, _, h, w = x.shape
    return torch.empty_like(x), x.new_empty((b, 2, h, w)), x.new_empty((b, h, w))


@torch.library.register_fake("hermes::inter_task_attention_bwd")
def _ita_bwd_fake(grad_y, x, gate, weight, pooled, attention):
    return (
        torch.empty_like(x),
        torch.empty_like(gate),
        torch.empty_like(weight),
        weight.new_empty((1,)),
    )


def _ita_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, gate, weight, _ = inputs
    _, pooled, attention = output
    ctx.save_for_backward(x, gate, weight, pooled, attention)


def _ita_backward(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple:
    x, gate, weight, pooled, attention = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    return _OPS.inter_task_attention_bwd(grad_y.contiguous(), x, gate, weight, pooled, attention)


torch.library.register_autograd(
    "hermes::inter_task_attention_fwd", _ita_backward, setup_context=_ita_setup_context
)


def inter_task_attention_cpp(
    cls_feature: Tensor, gate: Tensor, spatial_weight: Tensor, spatial_bias: Tensor
) -> Tensor:
    """``inter_task_attention`` on ``hermes._C``. Shapes: cls_feature (B, C, H, W), gate (B, C),
    spatial_weight (1, 2, k, k), spatial_bias (1,). Returns (B, C, H, W) in the feature's dtype
    (fp16/bf16 computed in fp32 on the CPU)."""
    if cls_feature.numel() == 0:  # the kernels' channel mean would be 0/0 for C = 0
        return inter_task_attention_reference(cls_feature, gate, spatial_weight, spatial_bias)
    dtype = cls_feature.dtype
    compute = dtype if cls_feature.is_cuda else _compute_dtype(dtype)
    y, _, _ = _OPS.inter_task_attention_fwd(
        cls_feature.to(compute),
        gate.to(compute),
        spatial_weight.to(compute),
        spatial_bias.to(compute),
    )
    return y.to(dtype)


def _ita_reasons(device_type: str) -> Callable[..., list[str]]:
    def reasons(cls_feature: Tensor, **_: Any) -> list[str]:
        out = _device_reasons("inter_task_attention_fwd", device_type, cls_feature)
        if not cls_feature.is_floating_point():
            out.append(f"needs a floating point feature, got {cls_feature.dtype}")
        return out

    return reasons


dispatch.register("inter_task_attention", "cpp", inter_task_attention_cpp, _ita_reasons("cpu"))
dispatch.register("inter_task_attention", "cuda", inter_task_attention_cpp, _ita_reasons("cuda"))
