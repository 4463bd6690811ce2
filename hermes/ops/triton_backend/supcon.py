"""``supcon_loss`` on Triton: custom ops ``hermes::triton_supcon_fwd`` / ``_bwd`` and autograd.

The kernels (``hermes.kernels.supcon``) do the pairwise passes (log-sum-exp, and the positive
pairs of ``pos_plus_neg``) on dense int32 class ids; the positive term of ``all`` and the
positive counts come from per-class feature sums here (O((N + M) d), no host synchronisation).
Weights, reduction and the non-finite rule are the public op's (:func:`hermes.ops.supcon_loss`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hermes.kernels import supcon as K
from hermes.ops.triton_backend._common import (
    HALF_AND_FLOAT,
    device_reasons,
    dtype_reasons,
    launch_device,
)


def _launch_args(kernel: str, anchors: Tensor, fp32_precision: str) -> dict:
    """Constexprs and launch options of ``supcon_<kernel>_kernel`` for these anchors."""
    dot = K.dot_mode(anchors.dtype, fp32_precision)
    return dict(DOT=dot, **K.launch_config(kernel, anchors.shape[1], dot))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _class_ids(labels: Tensor, contrast_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Dense class ids of anchors (N,) and contrasts (M,), int64 in ``[0, N + M)``, by a sort
    (any int64 labels, no ``unique``, no host synchronisation). Equal labels, equal ids."""
    n = labels.shape[0]
    sorted_y, order = torch.sort(torch.cat([labels, contrast_labels]))
    first = torch.ones_like(sorted_y, dtype=torch.bool)
    first[1:] = sorted_y[1:] != sorted_y[:-1]
    ids = torch.empty_like(sorted_y).scatter_(0, order, torch.cumsum(first, 0) - 1)
    return ids[:n], ids[n:]


def _positives(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor,
    contrast_labels: Tensor,
    ids_a: Tensor,
    ids_b: Tensor,
    self_offset: int,
    has_self: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The linear positive term from per-class feature sums, without a host synchronisation.

    With ``S_c`` the sum of the contrast features of class ``c`` (``ids_a``, ``ids_b`` from
    :func:`_class_ids`), anchor ``i``'s positives sum to ``S_{y_i} - b_self`` (when its self
    pair exists and carries its label).

    Returns ``pos_feat`` (N, d) fp32 (sum of the positives' features), ``n_pos`` (N,) fp32, the
    self contrast index (N,) (clamped into range) and whether the self pair is a positive that
    must be left out (N,) fp32.
    """
    n, m = labels.shape[0], contrast_labels.shape[0]
    b = contrasts.float()
    sums = torch.zeros(n + m, b.shape[1], device=b.device).index_add_(0, ids_b, b)
    counts = torch.zeros(n + m, device=b.device).index_add_(0, ids_b, b.new_ones(m))
    self_idx = torch.arange(n, device=b.device) + self_offset
    self_pos = (self_idx >= 0) & (self_idx < m) & has_self
    self_idx = self_idx.clamp(0, m - 1)
    self_pos = (self_pos & (contrast_labels[self_idx] == labels)).float()
    pos_feat = sums[ids_a] - self_pos[:, None] * b[self_idx]
    n_pos = counts[ids_a] - self_pos
    return pos_feat, n_pos, self_idx, self_pos


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
    fp32_precision: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shapes: anchors (N, d), labels (N,), contrasts (M, d) with M >= 1, contrast_labels (M,),
    all contiguous. ``fp32_precision``: how fp32 tiles are multiplied (``K.FP32_PRECISIONS``).

    Returns four (N,) fp32 tensors: the loss per anchor (unweighted, 0 without positives), the
    log-sum-exp (over non-self pairs for ``all``, over negatives for ``pos_plus_neg``), the
    positive count, and ``h`` (pos_plus_neg; zeros for ``all``) for the backward pass.
    """
    n, d = anchors.shape
    m = contrasts.shape[0]
    scale = temperature / base_temperature
    lse, sp_sum, h = (torch.zeros(n, dtype=torch.float32, device=anchors.device) for _ in range(3))
    ids_a, ids_b = _class_ids(labels, contrast_labels)
    if n > 0:
        cfg = _launch_args("fwd", anchors, fp32_precision)
        with launch_device(anchors):
            K.supcon_fwd_kernel[(_cdiv(n, cfg["BLOCK_N"]),)](
                anchors,
                ids_a.int(),
                contrasts,
                ids_b.int(),
                lse,
                sp_sum,
                h,
                n,
                m,
                d,
                1.0 / temperature,
                self_offset,
                HAS_SELF=has_self,
                POS_PLUS_NEG=pos_plus_neg,
                **cfg,
            )
    pos_feat, n_pos, *_ = _positives(
        anchors, labels, contrasts, contrast_labels, ids_a, ids_b, self_offset, has_self
    )
    denom = n_pos.clamp(min=1)
    if pos_plus_neg:
        loss = scale * sp_sum / denom
    else:
        loss = scale * (lse - (anchors.float() * pos_feat).sum(dim=1) / temperature / denom)
    loss = torch.where(n_pos > 0, loss, 0.0)
    return loss, lse, n_pos, h


@supcon_fwd.register_fake
def _(
    anchors,
    labels,
    contrasts,
    contrast_labels,
    temperature,
    base_temperature,
    self_offset,
    has_self,
    pos_plus_neg,
    fp32_precision,
):
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
    h: Tensor,
    temperature: float,
    base_temperature: float,
    self_offset: int,
    has_self: bool,
    pos_plus_neg: bool,
    fp32_precision: str,
) -> tuple[Tensor, Tensor]:
    """Gradients of the per-anchor losses: ``(d anchors (N, d), d contrasts (M, d))`` in their dtypes."""
    n, d = anchors.shape
    m = contrasts.shape[0]
    inv_t = 1.0 / temperature
    g = torch.where(
        n_pos > 0, grad_loss.float() * (temperature / base_temperature) / n_pos.clamp(min=1), 0.0
    )
    c = (g * h if pos_plus_neg else g * n_pos).contiguous()
    g = g.contiguous()
    da = torch.zeros(n, d, dtype=torch.float32, device=anchors.device)
    db = torch.zeros(m, d, dtype=torch.float32, device=anchors.device)
    ids_a, ids_b = _class_ids(labels, contrast_labels)
    if n > 0:
        common = (n, m, d, inv_t, self_offset)
        flags = dict(HAS_SELF=has_self, POS_PLUS_NEG=pos_plus_neg)
        ya, yb = ids_a.int(), ids_b.int()
        cfg = _launch_args("bwd_anchor", anchors, fp32_precision)
        with launch_device(anchors):
            K.supcon_bwd_anchor_kernel[(_cdiv(n, cfg["BLOCK_N"]),)](
                anchors, ya, contrasts, yb, lse, c, g, da, *common, **flags, **cfg
            )
        cfg = _launch_args("bwd_contrast", anchors, fp32_precision)
        with launch_device(anchors):
            K.supcon_bwd_contrast_kernel[(_cdiv(m, cfg["BLOCK_M"]),)](
                anchors, ya, contrasts, yb, lse, c, g, db, *common, **flags, **cfg
            )
    if not pos_plus_neg:
        # The positive term -g_i a_i . (S_{y_i} - b_self) / t, by the class sums again.
        pos_feat, _, self_idx, self_pos = _positives(
            anchors, labels, contrasts, contrast_labels, ids_a, ids_b, self_offset, has_self
        )
        ga = g[:, None] * anchors.float()
        da -= inv_t * g[:, None] * pos_feat
        anchor_sums = torch.zeros(n + m, d, device=da.device).index_add_(0, ids_a, ga)
        db -= inv_t * anchor_sums[ids_b]
        db.index_add_(0, self_idx, inv_t * self_pos[:, None] * ga)
    return da.to(anchors.dtype), db.to(contrasts.dtype)


@supcon_bwd.register_fake
def _(
    grad_loss,
    anchors,
    labels,
    contrasts,
    contrast_labels,
    lse,
    n_pos,
    h,
    temperature,
    base_temperature,
    self_offset,
    has_self,
    pos_plus_neg,
    fp32_precision,
):
    return torch.empty_like(anchors), torch.empty_like(contrasts)


def _setup_context(ctx, inputs, output) -> None:
    anchors, labels, contrasts, contrast_labels, *scalars = inputs
    _, lse, n_pos, h = output
    ctx.save_for_backward(anchors, labels, contrasts, contrast_labels, lse, n_pos, h)
    ctx.scalars = scalars


def _backward(ctx, grad_loss, _grad_lse, _grad_npos, _grad_h):
    anchors, labels, contrasts, contrast_labels, lse, n_pos, h = ctx.saved_tensors
    da, db = supcon_bwd(
        grad_loss.contiguous(),
        anchors,
        labels,
        contrasts,
        contrast_labels,
        lse,
        n_pos,
        h,
        *ctx.scalars,
    )
    return da, None, db, None, None, None, None, None, None, None


supcon_fwd.register_autograd(_backward, setup_context=_setup_context)


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
    """The Triton kernels behind :func:`hermes.ops.supcon_loss`.

    Shapes: anchors (N, d), labels (N,), contrasts (M, d), contrast_labels (M,).
    Returns the unweighted per-anchor loss (N,) fp32 (0 for an anchor without a positive) and
    the number of positives per anchor (N,) fp32.
    """
    anchors = anchors.contiguous()
    if contrasts is not None and contrasts.shape[0] == 0:
        # No contrast at all: no anchor has a positive (the reference's value, with a graph).
        zero = (anchors.sum(dim=1).float() + contrasts.float().sum()) * 0.0
        return zero, torch.zeros_like(zero)
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
        fp32_precision,
    )
    return per_anchor, n_pos


def not_supported_reasons(anchors: Tensor, contrasts: Tensor | None = None, **_) -> list[str]:
    """Why the Triton ``supcon_loss`` cannot take these inputs (empty when it can)."""
    reasons = device_reasons(anchors, contrasts)
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
