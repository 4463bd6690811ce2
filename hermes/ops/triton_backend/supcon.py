"""``supcon_loss`` on Triton: custom ops ``hermes::triton_supcon_fwd`` / ``_bwd`` and autograd.

The kernels (``hermes.kernels.supcon``) return per-anchor losses; per-anchor weights and the
reduction are applied here with plain tensor ops, so gradients reach ``weights`` too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hermes.kernels import supcon as K
from hermes.ops.triton_backend._common import HALF_AND_FLOAT, device_reasons, dtype_reasons


def _launch_args(anchors: Tensor, contrasts: Tensor) -> dict:
    n_block, m_block, d_block = K.block_sizes(anchors.shape[1])
    return dict(
        F32_DOT=K.fp32_dot(anchors.dtype), BLOCK_N=n_block, BLOCK_M=m_block, BLOCK_D=d_block
    )


@torch.library.custom_op("hermes::triton_supcon_fwd", mutates_args=())
def supcon_fwd(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor,
    contrast_labels: Tensor,
    temperature: float,
    base_temperature: float,
    self_offset: int,
    has_self: bool,
    pos_plus_neg: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shapes: anchors (N, d), labels (N,), contrasts (M, d), contrast_labels (M,), all contiguous.

    Returns four (N,) fp32 tensors: the loss per anchor (unweighted, 0 without positives), the
    log-sum-exp (over non-self pairs for ``all``, over negatives for ``pos_plus_neg``), the
    positive count, and ``h`` (pos_plus_neg only, else zeros) for the backward pass.
    """
    n, d = anchors.shape
    m = contrasts.shape[0]
    out = [torch.zeros(n, dtype=torch.float32, device=anchors.device) for _ in range(4)]
    if n == 0:
        return out[0], out[1], out[2], out[3]
    cfg = _launch_args(anchors, contrasts)
    grid = (triton_cdiv(n, cfg["BLOCK_N"]),)
    K.supcon_fwd_kernel[grid](
        anchors, labels, contrasts, contrast_labels,
        out[0], out[1], out[2], out[3],
        n, m, d, 1.0 / temperature, temperature / base_temperature, self_offset,
        HAS_SELF=has_self, POS_PLUS_NEG=pos_plus_neg, **cfg,
    )
    return out[0], out[1], out[2], out[3]


@supcon_fwd.register_fake
def _(anchors, labels, contrasts, contrast_labels, temperature, base_temperature, self_offset,
      has_self, pos_plus_neg):
    n = anchors.shape[0]
    return tuple(anchors.new_empty((n,), dtype=torch.float32) for _ in range(4))


@torch.library.custom_op("hermes::triton_supcon_bwd", mutates_args=())
def supcon_bwd(
    grad_loss: Tensor,
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor,
    contrast_labels: Tensor,
    lse: Tensor,
    n_pos: Tensor,
    aux: Tensor,
    temperature: float,
    base_temperature: float,
    self_offset: int,
    has_self: bool,
    pos_plus_neg: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients of the per-anchor losses: ``(d anchors (N, d), d contrasts (M, d))`` in their dtypes."""
    n, d = anchors.shape
    m = contrasts.shape[0]
    scale = temperature / base_temperature
    g = torch.where(n_pos > 0, grad_loss.float() * scale / n_pos.clamp(min=1), 0.0).contiguous()
    da = torch.zeros(n, d, dtype=torch.float32, device=anchors.device)
    db = torch.zeros(m, d, dtype=torch.float32, device=anchors.device)
    if n > 0 and m > 0:
        cfg = _launch_args(anchors, contrasts)
        common = (n, m, d, 1.0 / temperature, self_offset)
        K.supcon_bwd_anchor_kernel[(triton_cdiv(n, cfg["BLOCK_N"]),)](
            anchors, labels, contrasts, contrast_labels, lse, n_pos, aux, g, da, *common,
            HAS_SELF=has_self, POS_PLUS_NEG=pos_plus_neg, **cfg,
        )
        K.supcon_bwd_contrast_kernel[(triton_cdiv(m, cfg["BLOCK_M"]),)](
            anchors, labels, contrasts, contrast_labels, lse, n_pos, aux, g, db, *common,
            HAS_SELF=has_self, POS_PLUS_NEG=pos_plus_neg, **cfg,
        )
    return da.to(anchors.dtype), db.to(contrasts.dtype)


@supcon_bwd.register_fake
def _(grad_loss, anchors, labels, contrasts, contrast_labels, lse, n_pos, aux, temperature,
      base_temperature, self_offset, has_self, pos_plus_neg):
    return torch.empty_like(anchors), torch.empty_like(contrasts)


_SCALARS = ("temperature", "base_temperature", "self_offset", "has_self", "pos_plus_neg")


def _setup_context(ctx, inputs, output) -> None:
    anchors, labels, contrasts, contrast_labels, *scalars = inputs
    _, lse, n_pos, aux = output
    ctx.save_for_backward(anchors, labels, contrasts, contrast_labels, lse, n_pos, aux)
    ctx.scalars = scalars


def _backward(ctx, grad_loss, _grad_lse, _grad_npos, _grad_aux):
    anchors, labels, contrasts, contrast_labels, lse, n_pos, aux = ctx.saved_tensors
    da, db = supcon_bwd(
        grad_loss.contiguous(), anchors, labels, contrasts, contrast_labels, lse, n_pos, aux,
        *ctx.scalars,
    )
    return da, None, db, None, None, None, None, None, None


supcon_fwd.register_autograd(_backward, setup_context=_setup_context)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def supcon_loss(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor | None,
    contrast_labels: Tensor | None,
    *,
    temperature: float,
    base_temperature: float,
    weights: Tensor | None,
    denominator: str,
    reduction: str,
    self_offset: int | None,
) -> Tensor:
    """The Triton implementation behind :func:`hermes.ops.supcon_loss` (same arguments)."""
    anchors = anchors.contiguous()
    if contrasts is None:
        contrasts, contrast_labels, self_offset = anchors, labels, 0
    per_anchor, _, n_pos, _ = supcon_fwd(
        anchors,
        labels.contiguous(),
        contrasts.contiguous(),
        contrast_labels.contiguous(),
        temperature,
        base_temperature,
        0 if self_offset is None else int(self_offset),
        self_offset is not None,
        denominator == "pos_plus_neg",
    )
    if weights is not None:
        per_anchor = per_anchor * weights.float()
    if reduction == "none":
        return per_anchor
    return per_anchor.sum() / (n_pos > 0).sum().clamp(min=1)


def not_supported_reasons(
    anchors: Tensor, contrasts: Tensor | None = None, weights: Tensor | None = None, **_
) -> list[str]:
    """Why the Triton ``supcon_loss`` cannot take these inputs (empty when it can)."""
    reasons = device_reasons(anchors, contrasts, weights)
    reasons += dtype_reasons("anchors", anchors, HALF_AND_FLOAT)
    if contrasts is not None and contrasts.dtype != anchors.dtype:
        reasons.append(
            f"contrasts dtype {contrasts.dtype} differs from anchors dtype {anchors.dtype}"
        )
    if anchors.shape[1] > K.MAX_BLOCK_D:
        reasons.append(
            f"feature size d={anchors.shape[1]} exceeds the kernel block (at most {K.MAX_BLOCK_D})"
        )
    return reasons
