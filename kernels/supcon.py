"""Triton kernels of ``supcon_loss``: tiled online log-sum-exp, no N x M matrix in memory.

Notation: anchors ``a`` (N, d), contrasts ``b`` (M, d), ``s_ij = a_i . b_j / t``; the self pair
of anchor ``i`` is contrast ``i + self_offset`` (when ``HAS_SELF``). ``pos_ij``: same label and
not self; ``neg_ij``: a different label. The positive term of ``all`` and the positive counts
come from per-class feature sums outside these kernels (``hermes.ops.triton_backend.supcon``).

Forward, one program per block of anchors and a loop over contrast blocks:
    ``all``:          ``L_i = logsumexp_{j != self} s_ij`` (online max and sum).
    ``pos_plus_neg``: pass 1 ``L_i = logsumexp_{neg} s_ij``; pass 2 over the same tiles
                      ``sum_{j in P(i)} softplus(L_i - s_ij)`` (the loss up to its scale) and
                      ``h_i = sum_{j in P(i)} sigmoid(L_i - s_ij)`` for the backward pass.
Only per-anchor vectors are stored: O(N) memory besides the inputs.

Backward recomputes the tiles; per anchor the caller passes ``c_i`` and ``g_i``:
    ``all``:          ``ds_ij = c_i exp(s_ij - L_i) [j != self]``  (the positive part is linear
                      in the features and is added from the class sums by the caller)
    ``pos_plus_neg``: ``ds_ij = c_i exp(s_ij - L_i) neg_ij - g_i sigmoid(L_i - s_ij) pos_ij``
then ``dA = ds B / t`` (one program per anchor block) and ``dB = ds^T A / t`` (one program per
contrast block, looping over anchor blocks), so no atomics are needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hermes.kernels import INTERPRET

MAX_BLOCK_D = 256


@triton.jit
def _softplus(x):
    # log(1 + exp(x)), stable for both signs.
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _load_rows(ptr, offs, n, offs_d, D):
    return tl.load(
        ptr + offs[:, None] * D + offs_d[None, :],
        mask=(offs < n)[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )


@triton.jit
def _dot_nt(x, y, F32_DOT: tl.constexpr):
    """x @ y^T with fp32 accumulation; IEEE fp32 products when ``F32_DOT``."""
    if F32_DOT:
        return tl.dot(x.to(tl.float32), tl.trans(y.to(tl.float32)), input_precision="ieee")
    return tl.dot(x, tl.trans(y))


@triton.jit
def _masks(ya, yb, offs_n, offs_m, M, self_offset, HAS_SELF: tl.constexpr):
    """(same label, not the self pair, contrast in range), each broadcastable to the tile."""
    same = ya[:, None] == yb[None, :]
    col_ok = (offs_m < M)[None, :]
    if HAS_SELF:
        not_self = offs_m[None, :] != (offs_n + self_offset)[:, None]
    else:
        not_self = col_ok
    return same, not_self, col_ok


@triton.jit
def supcon_fwd_kernel(
    a_ptr,
    ya_ptr,
    b_ptr,
    yb_ptr,
    lse_ptr,
    sp_ptr,
    sig_ptr,
    N,
    M,
    D,
    inv_t,
    self_offset,
    HAS_SELF: tl.constexpr,
    POS_PLUS_NEG: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """lse (N,) fp32; for pos_plus_neg also the softplus and sigmoid sums over positives (N,).
    Grid: (cdiv(N, BLOCK_N),)."""
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < N
    a = _load_rows(a_ptr, offs_n, N, offs_d, D)
    ya = tl.load(ya_ptr + offs_n, mask=row_ok, other=0)

    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        s = _dot_nt(a, _load_rows(b_ptr, offs_m, M, offs_d, D), F32_DOT) * inv_t
        yb = tl.load(yb_ptr + offs_m, mask=offs_m < M, other=0)
        same, not_self, col_ok = _masks(ya, yb, offs_n, offs_m, M, self_offset, HAS_SELF)
        if POS_PLUS_NEG:
            keep = (~same) & col_ok
        else:
            keep = not_self & col_ok
        s_keep = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_keep, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s_keep - m_safe[:, None]), axis=1)
        m_i = m_new
    lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    # NaN similarities reach l_i (exp(NaN) = NaN) even where max() drops them: keep the NaN.
    lse = tl.where(l_i != l_i, l_i, lse)
    tl.store(lse_ptr + offs_n, lse, mask=row_ok)

    if POS_PLUS_NEG:
        sp_sum = tl.zeros([BLOCK_N], tl.float32)
        sig_sum = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, M, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            s = _dot_nt(a, _load_rows(b_ptr, offs_m, M, offs_d, D), F32_DOT) * inv_t
            yb = tl.load(yb_ptr + offs_m, mask=offs_m < M, other=0)
            same, not_self, col_ok = _masks(ya, yb, offs_n, offs_m, M, self_offset, HAS_SELF)
            pos = same & not_self & col_ok
            u = lse[:, None] - s
            sp_sum += tl.sum(tl.where(pos, _softplus(u), 0.0), axis=1)
            sig_sum += tl.sum(tl.where(pos, tl.sigmoid(u), 0.0), axis=1)
        tl.store(sp_ptr + offs_n, sp_sum, mask=row_ok)
        tl.store(sig_ptr + offs_n, sig_sum, mask=row_ok)


@triton.jit
def _grad_tile(s, same, not_self, col_ok, lse, c, g, POS_PLUS_NEG: tl.constexpr):
    """``dloss / ds`` on one (anchors x contrasts) tile; lse, c, g are (BLOCK_N,)."""
    if POS_PLUS_NEG:
        p_neg = tl.where((~same) & col_ok, tl.exp(s - lse[:, None]), 0.0)
        p_pos = tl.where(same & not_self & col_ok, tl.sigmoid(lse[:, None] - s), 0.0)
        ds = c[:, None] * p_neg - g[:, None] * p_pos
    else:
        ds = c[:, None] * tl.where(not_self & col_ok, tl.exp(s - lse[:, None]), 0.0)
    # Rows without a positive have c = g = 0 but may hold inf * 0 = NaN: zero them explicitly.
    return tl.where(((c != 0) | (g != 0))[:, None], ds, 0.0)


@triton.jit
def supcon_bwd_anchor_kernel(
    a_ptr,
    ya_ptr,
    b_ptr,
    yb_ptr,
    lse_ptr,
    c_ptr,
    g_ptr,
    da_ptr,
    N,
    M,
    D,
    inv_t,
    self_offset,
    HAS_SELF: tl.constexpr,
    POS_PLUS_NEG: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dA (N, d) fp32 = ds B / t. Grid: (cdiv(N, BLOCK_N),)."""
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < N
    a = _load_rows(a_ptr, offs_n, N, offs_d, D)
    ya = tl.load(ya_ptr + offs_n, mask=row_ok, other=0)
    lse = tl.load(lse_ptr + offs_n, mask=row_ok, other=0.0)
    c = tl.load(c_ptr + offs_n, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_n, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        b = _load_rows(b_ptr, offs_m, M, offs_d, D)
        s = _dot_nt(a, b, F32_DOT) * inv_t
        yb = tl.load(yb_ptr + offs_m, mask=offs_m < M, other=0)
        same, not_self, col_ok = _masks(ya, yb, offs_n, offs_m, M, self_offset, HAS_SELF)
        ds = _grad_tile(s, same, not_self, col_ok, lse, c, g, POS_PLUS_NEG)
        # ds is rounded to the input dtype, as FlashAttention does with P (a no-op for fp32).
        ds = ds.to(b.dtype)
        if F32_DOT:
            acc += tl.dot(ds.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(ds, b)
    tl.store(
        da_ptr + offs_n[:, None] * D + offs_d[None, :],
        acc * inv_t,
        mask=row_ok[:, None] & (offs_d < D)[None, :],
    )


@triton.jit
def supcon_bwd_contrast_kernel(
    a_ptr,
    ya_ptr,
    b_ptr,
    yb_ptr,
    lse_ptr,
    c_ptr,
    g_ptr,
    db_ptr,
    N,
    M,
    D,
    inv_t,
    self_offset,
    HAS_SELF: tl.constexpr,
    POS_PLUS_NEG: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dB (M, d) fp32 = ds^T A / t. Grid: (cdiv(M, BLOCK_M),); the loop runs over anchor blocks."""
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    b = _load_rows(b_ptr, offs_m, M, offs_d, D)
    yb = tl.load(yb_ptr + offs_m, mask=offs_m < M, other=0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        row_ok = offs_n < N
        a = _load_rows(a_ptr, offs_n, N, offs_d, D)
        ya = tl.load(ya_ptr + offs_n, mask=row_ok, other=0)
        lse = tl.load(lse_ptr + offs_n, mask=row_ok, other=0.0)
        c = tl.load(c_ptr + offs_n, mask=row_ok, other=0.0)
        g = tl.load(g_ptr + offs_n, mask=row_ok, other=0.0)
        s = _dot_nt(a, b, F32_DOT) * inv_t
        same, not_self, col_ok = _masks(ya, yb, offs_n, offs_m, M, self_offset, HAS_SELF)
        ds = _grad_tile(s, same, not_self, col_ok, lse, c, g, POS_PLUS_NEG).to(a.dtype)
        if F32_DOT:
            acc += tl.dot(tl.trans(ds.to(tl.float32)), a.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(tl.trans(ds), a)
    tl.store(
        db_ptr + offs_m[:, None] * D + offs_d[None, :],
        acc * inv_t,
        mask=(offs_m < M)[:, None] & (offs_d < D)[None, :],
    )


def fp32_dot(dtype: torch.dtype) -> bool:
    """Whether the tiles are multiplied in fp32 (IEEE, not TF32) for ``dtype`` inputs.

    fp32 inputs: yes, to meet the 1e-5 contract. Half inputs use the tensor cores with fp32
    accumulation, except bf16 under the interpreter, whose bf16 ``tl.dot`` is wrong (Triton 3.8);
    there the (bf16-rounded) operands are upcast, which gives the same numbers as the tensor
    cores: products of bf16 values are exact in fp32.
    """
    return dtype == torch.float32 or (INTERPRET and dtype == torch.bfloat16)


def block_sizes(d: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_M, BLOCK_D) for feature size ``d`` (``d <= MAX_BLOCK_D``)."""
    block_d = max(16, triton.next_power_of_2(d))
    block = 64 if block_d <= 128 else 32
    return block, block, block_d
