"""Triton kernels of ``supcon_loss``: tiled online log-sum-exp, no N x M matrix in memory.

Notation: anchors ``a`` (N, d), contrasts ``b`` (M, d), ``s_ij = a_i . b_j / t``; the self pair
of anchor ``i`` is contrast ``i + self_offset`` (when ``HAS_SELF``). ``pos_ij``: same label and
not self; ``neg_ij``: a different label.

Forward (one program per block of anchors, a loop over contrast blocks):
    ``all``:          ``L_i = logsumexp_{j != self} s_ij`` (online max / sum), and in the same
                      pass ``sum_{j in P(i)} s_ij`` and ``|P(i)|`` from the tile's label masks;
                      ``l_i = scale * (L_i - sum_pos s / |P(i)|)``.
    ``pos_plus_neg``: pass 1 ``L_i = logsumexp_{neg} s_ij``; pass 2 over the same tiles
                      ``l_i = scale / |P(i)| * sum_{j in P(i)} softplus(L_i - s_ij)``; it also
                      keeps ``h_i = sum_{j in P(i)} sigmoid(L_i - s_ij)`` for the backward pass.
Only the per-anchor vectors (``l``, ``L``, ``|P|``, ``h``) are stored: O(N) memory.

Backward recomputes the tiles. With ``g_i = dloss_i * scale / |P(i)|`` (0 without positives):
    ``all``:          ``ds_ij = g_i * (|P(i)| * exp(s_ij - L_i) [j != self] - pos_ij)``
    ``pos_plus_neg``: ``ds_ij = -g_i * sigmoid(L_i - s_ij) pos_ij + g_i h_i exp(s_ij - L_i) neg_ij``
and ``dA = ds B / t`` (one program per anchor block), ``dB = ds^T A / t`` (one per contrast
block), so no atomics are needed.

The positive term is taken from the tile's label mask rather than from per-class feature sums
``S_c``: the tile is computed for the log-sum-exp anyway, so the mask costs O(1) per pair, labels
may be any int64 values (SimCLR uses one class per sample) without a relabelling pass, and the
same pass serves the ``pos_plus_neg`` form, whose positive term is not linear in ``s``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hermes.kernels import INTERPRET


@triton.jit
def _softplus(x):
    # log(1 + exp(x)), stable for both signs.
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sim_tile(a, b_ptr, yb_ptr, offs_m, offs_d, M, D, inv_t, F32_DOT: tl.constexpr):
    """``s = a b^T / t`` for one contrast block, the contrast labels and the column mask."""
    col_ok = offs_m < M
    b = tl.load(
        b_ptr + offs_m[:, None] * D + offs_d[None, :],
        mask=col_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )
    if F32_DOT:
        s = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(a, tl.trans(b))
    yb = tl.load(yb_ptr + offs_m, mask=col_ok, other=0)
    return s * inv_t, yb, col_ok


@triton.jit
def supcon_fwd_kernel(
    a_ptr, ya_ptr, b_ptr, yb_ptr,
    loss_ptr, lse_ptr, npos_ptr, aux_ptr,
    N, M, D, inv_t, scale, self_offset,
    HAS_SELF: tl.constexpr, POS_PLUS_NEG: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Per-anchor loss, log-sum-exp, positive count (and ``h`` for pos_plus_neg). Grid: (cdiv(N, BLOCK_N),)."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < N
    a = tl.load(
        a_ptr + offs_n[:, None] * D + offs_d[None, :],
        mask=row_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )
    ya = tl.load(ya_ptr + offs_n, mask=row_ok, other=0)
    self_col = offs_n + self_offset

    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_N], tl.float32)
    pos_sum = tl.zeros([BLOCK_N], tl.float32)
    n_pos = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        s, yb, col_ok = _sim_tile(a, b_ptr, yb_ptr, offs_m, offs_d, M, D, inv_t, F32_DOT)
        same = ya[:, None] == yb[None, :]
        if HAS_SELF:
            not_self = offs_m[None, :] != self_col[:, None]
        else:
            not_self = offs_m[None, :] >= 0
        pos = same & not_self & col_ok[None, :]
        if POS_PLUS_NEG:
            keep = (~same) & col_ok[None, :]
        else:
            keep = not_self & col_ok[None, :]
            pos_sum += tl.sum(tl.where(pos, s, 0.0), axis=1)
        n_pos += tl.sum(pos.to(tl.float32), axis=1)
        s_keep = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_keep, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s_keep - m_safe[:, None]), axis=1)
        m_i = m_new
    lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    # NaN similarities reach l_i (exp(NaN) = NaN) but may be dropped by max(); restore them.
    lse = tl.where(l_i != l_i, l_i, lse)
    has_pos = n_pos > 0
    denom = tl.where(has_pos, n_pos, 1.0)

    if POS_PLUS_NEG:
        sp_sum = tl.zeros([BLOCK_N], tl.float32)
        sig_sum = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, M, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            s, yb, col_ok = _sim_tile(a, b_ptr, yb_ptr, offs_m, offs_d, M, D, inv_t, F32_DOT)
            same = ya[:, None] == yb[None, :]
            if HAS_SELF:
                not_self = offs_m[None, :] != self_col[:, None]
            else:
                not_self = offs_m[None, :] >= 0
            pos = same & not_self & col_ok[None, :]
            u = lse[:, None] - s
            sp_sum += tl.sum(tl.where(pos, _softplus(u), 0.0), axis=1)
            sig_sum += tl.sum(tl.where(pos, tl.sigmoid(u), 0.0), axis=1)
        loss = scale * sp_sum / denom
        tl.store(aux_ptr + offs_n, sig_sum, mask=row_ok)
    else:
        loss = scale * (lse - pos_sum / denom)
    loss = tl.where(has_pos, loss, 0.0)
    tl.store(loss_ptr + offs_n, loss, mask=row_ok)
    tl.store(lse_ptr + offs_n, lse, mask=row_ok)
    tl.store(npos_ptr + offs_n, n_pos, mask=row_ok)


@triton.jit
def _grad_tile(s, same, not_self, col_ok, lse, n_pos, g, h, POS_PLUS_NEG: tl.constexpr):
    """``dloss / ds`` on one (anchors x contrasts) tile; row vectors are (BLOCK_N,)."""
    pos = same & not_self & col_ok
    if POS_PLUS_NEG:
        neg = (~same) & col_ok
        p_neg = tl.where(neg, tl.exp(s - lse[:, None]), 0.0)
        p_pos = tl.where(pos, tl.sigmoid(lse[:, None] - s), 0.0)
        ds = g[:, None] * (h[:, None] * p_neg - p_pos)
    else:
        keep = not_self & col_ok
        p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
        ds = g[:, None] * (n_pos[:, None] * p - pos.to(tl.float32))
    return ds


@triton.jit
def supcon_bwd_anchor_kernel(
    a_ptr, ya_ptr, b_ptr, yb_ptr,
    lse_ptr, npos_ptr, aux_ptr, g_ptr, da_ptr,
    N, M, D, inv_t, self_offset,
    HAS_SELF: tl.constexpr, POS_PLUS_NEG: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``dA = ds B / t`` (fp32 out). ``g``: dloss_i * scale / |P(i)| (0 without positives). Grid: (cdiv(N, BLOCK_N),)."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < N
    a = tl.load(
        a_ptr + offs_n[:, None] * D + offs_d[None, :],
        mask=row_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )
    ya = tl.load(ya_ptr + offs_n, mask=row_ok, other=0)
    lse = tl.load(lse_ptr + offs_n, mask=row_ok, other=0.0)
    n_pos = tl.load(npos_ptr + offs_n, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_n, mask=row_ok, other=0.0)
    if POS_PLUS_NEG:
        h = tl.load(aux_ptr + offs_n, mask=row_ok, other=0.0)
    else:
        h = g
    self_col = offs_n + self_offset
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        col_ok = offs_m < M
        b = tl.load(
            b_ptr + offs_m[:, None] * D + offs_d[None, :],
            mask=col_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
        if F32_DOT:
            s = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
            s = s * inv_t
        else:
            s = tl.dot(a, tl.trans(b)) * inv_t
        yb = tl.load(yb_ptr + offs_m, mask=col_ok, other=0)
        same = ya[:, None] == yb[None, :]
        if HAS_SELF:
            not_self = offs_m[None, :] != self_col[:, None]
        else:
            not_self = offs_m[None, :] >= 0
        ds = _grad_tile(s, same, not_self, col_ok[None, :], lse, n_pos, g, h, POS_PLUS_NEG)
        # Rows with no positive have g = 0 but may hold inf * 0 = NaN; zero them explicitly.
        ds = tl.where((g != 0)[:, None], ds, 0.0)
        if F32_DOT:
            # ds is rounded to the input dtype as on the tensor-core path (a no-op for fp32).
            ds = ds.to(b.dtype).to(tl.float32)
            acc += tl.dot(ds, b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(ds.to(b.dtype), b)
    tl.store(
        da_ptr + offs_n[:, None] * D + offs_d[None, :],
        acc * inv_t,
        mask=row_ok[:, None] & (offs_d[None, :] < D),
    )


@triton.jit
def supcon_bwd_contrast_kernel(
    a_ptr, ya_ptr, b_ptr, yb_ptr,
    lse_ptr, npos_ptr, aux_ptr, g_ptr, db_ptr,
    N, M, D, inv_t, self_offset,
    HAS_SELF: tl.constexpr, POS_PLUS_NEG: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``dB = ds^T A / t`` (fp32 out). Grid: (cdiv(M, BLOCK_M),); the loop runs over anchor blocks."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_m < M
    b = tl.load(
        b_ptr + offs_m[:, None] * D + offs_d[None, :],
        mask=col_ok[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )
    yb = tl.load(yb_ptr + offs_m, mask=col_ok, other=0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        row_ok = offs_n < N
        a = tl.load(
            a_ptr + offs_n[:, None] * D + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
        ya = tl.load(ya_ptr + offs_n, mask=row_ok, other=0)
        lse = tl.load(lse_ptr + offs_n, mask=row_ok, other=0.0)
        n_pos = tl.load(npos_ptr + offs_n, mask=row_ok, other=0.0)
        g = tl.load(g_ptr + offs_n, mask=row_ok, other=0.0)
        if POS_PLUS_NEG:
            h = tl.load(aux_ptr + offs_n, mask=row_ok, other=0.0)
        else:
            h = g
        if F32_DOT:
            s = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")
            s = s * inv_t
        else:
            s = tl.dot(a, tl.trans(b)) * inv_t
        same = ya[:, None] == yb[None, :]
        if HAS_SELF:
            not_self = offs_m[None, :] != (offs_n + self_offset)[:, None]
        else:
            not_self = offs_m[None, :] >= 0
        ds = _grad_tile(s, same, not_self, col_ok[None, :], lse, n_pos, g, h, POS_PLUS_NEG)
        ds = tl.where((g != 0)[:, None] & row_ok[:, None], ds, 0.0)
        if F32_DOT:
            ds = ds.to(a.dtype).to(tl.float32)
            acc += tl.dot(tl.trans(ds), a.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(tl.trans(ds.to(a.dtype)), a)
    tl.store(
        db_ptr + offs_m[:, None] * D + offs_d[None, :],
        acc * inv_t,
        mask=col_ok[:, None] & (offs_d[None, :] < D),
    )


MAX_BLOCK_D = 256


def fp32_dot(dtype: torch.dtype) -> bool:
    """Whether the similarity tiles are multiplied in fp32 (IEEE, not TF32) for ``dtype`` inputs.

    fp32 inputs: yes, to meet the 1e-5 contract. Half inputs use the tensor cores with fp32
    accumulation, except bf16 under the interpreter, whose bf16 ``tl.dot`` is wrong (Triton 3.8);
    there the operands are upcast (and the backward's ``ds`` rounded to bf16 first), which gives
    the same numbers as the tensor-core path: bf16 products are exact in fp32.
    """
    return dtype == torch.float32 or (INTERPRET and dtype == torch.bfloat16)


def block_sizes(d: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_M, BLOCK_D) for feature size ``d`` (``d <= MAX_BLOCK_D``)."""
    block_d = max(16, triton.next_power_of_2(d))
    block = 64 if block_d <= 128 else 32
    return block, block, block_d
