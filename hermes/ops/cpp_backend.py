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
def _supcon_fwd_fake(anchors, labels, contrasts, contrast_labels, temperature, base_temperature,
                     self_offset, pos_plus_neg):
    n = anchors.shape[0]
    vec = anchors.new_empty(n)
    return vec, anchors.new_empty(n), anchors.new_empty(n), labels.new_empty(n)


@torch.library.register_fake("hermes::supcon_bwd")
def _supcon_bwd_fake(grad_loss, anchors, labels, contrasts, contrast_labels, lse, q, num_pos,
                     temperature, base_temperature, self_offset, pos_plus_neg):
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
        grad_loss.contiguous(), anchors, labels, contrasts, contrast_labels, lse, q, num_pos,
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
) -> Tensor:
    """``supcon_loss`` on ``hermes._C`` (same arguments and semantics as the reference).

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
    loss = loss.float()
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
    # Measured on 2 AMD EPYC (Zen 3) cores, fp32, d = 128, forward + backward, "all":
    # see the module-level table _SUPCON_CPU_MEASUREMENTS.
    n = anchors.shape[0]
    m = n if contrasts is None else contrasts.shape[0]
    if n * m < _SUPCON_CPU_MIN_PAIRS:
        return [f"the reference is faster below {_SUPCON_CPU_MIN_PAIRS} pairs (N*M = {n * m})"]
    return []


# Below this many anchor-contrast pairs the reference (one small GEMM) is as fast or faster.
_SUPCON_CPU_MIN_PAIRS = 0

dispatch.register(
    "supcon_loss", "cpp", supcon_loss_cpp, _supcon_reasons("cpu"), _supcon_auto_reasons
)
dispatch.register("supcon_loss", "cuda", supcon_loss_cpp, _supcon_reasons("cuda"))
