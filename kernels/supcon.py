"""Triton kernels of ``supcon_loss``: tiled online log-sum-exp, no N x M matrix in memory.

Notation: anchors ``a`` (N, d), contrasts ``b`` (M, d), ``s_ij = a_i . b_j / t``; the self pair
of anchor ``i`` is contrast ``i + self_offset`` (when ``HAS_SELF``). Labels come as dense int32
class ids (``ya``, ``yb``). ``pos_ij``: same class and not self; ``neg_ij``: another class.
The positive term of ``all`` and the positive counts come from per-class feature sums outside
these kernels (``hermes.ops.triton_backend.supcon``).

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

# How fp32 tiles are multiplied (``fp32_precision`` of ``hermes.ops.supcon_loss``):
#   "ieee": fp32 FMA on the CUDA cores, no tensor cores (the fp32 reference's accuracy);
#   "tf32": tensor cores on TF32 operands (the fp32 values with their mantissa cut to 10 bits),
#           products accumulated in fp32.
FP32_PRECISIONS = ("ieee", "tf32")


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
def _dot(x, y, DOT: tl.constexpr):
    """x @ y with fp32 accumulation. ``DOT``: ``"half"`` multiplies the operands in their own
    dtype (fp16/bf16) on the tensor cores; ``"ieee"`` or ``"tf32"`` multiplies them as fp32
    with that ``input_precision`` (see :data:`FP32_PRECISIONS`)."""
    if DOT == "half":
        return tl.dot(x, y)
    else:
        return tl.dot(x.to(tl.float32), y.to(tl.float32), input_precision=DOT)


@triton.jit
def _dot_nt(x, y, DOT: tl.constexpr):
    """x @ y^T (see :func:`_dot`)."""
    return _dot(x, tl.trans(y), DOT)


@triton.jit
def _masks(
    ya,
    yb,
    row0,
    col0,
    offs_m,
    M,
    self_offset,
    HAS_SELF: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """(same class, not the self pair, contrast in range), each broadcastable to the tile of
    anchors ``row0 + [0, BLOCK_N)`` x contrasts ``col0 + [0, BLOCK_M)``.

    ``ya``, ``yb``: int32 class ids. The self pair is found with 32-bit tile-local indices (a
    tile of 64-bit indices costs twice the registers): row ``r``'s self is local column
    ``r + shift``, ``shift`` clamped to ``[-BLOCK_N, BLOCK_M]``, where no row has its self in
    the tile.
    """
    same = ya[:, None] == yb[None, :]
    col_ok = (offs_m < M)[None, :]
    if HAS_SELF:
        shift = (row0 - col0) + self_offset
        shift = tl.minimum(tl.maximum(shift, -BLOCK_N), BLOCK_M).to(tl.int32)
        rows = tl.arange(0, BLOCK_N) + shift
        not_self = tl.arange(0, BLOCK_M)[None, :] != rows[:, None]
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
    DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """lse (N,) fp32; for pos_plus_neg also the softplus and sigmoid sums over positives (N,).
    Grid: (cdiv(N, BLOCK_N),)."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_N
    offs_n = row0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < N
    a = _load_rows(a_ptr, offs_n, N, offs_d, D)
    ya = tl.load(ya_ptr + offs_n, mask=row_ok, other=0)

    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        s = _dot_nt(a, _load_rows(b_ptr, offs_m, M, offs_d, D), DOT) * inv_t
        yb = tl.load(yb_ptr + offs_m, mask=offs_m < M, other=0)
        same, not_self, col_ok = _masks(
            ya, yb, row0, start, offs_m, M, self_offset, HAS_SELF, BLOCK_N, BLOCK_M
        )
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
            s = _dot_nt(a, _load_rows(b_ptr, offs_m, M, offs_d, D), DOT) * inv_t
            yb = tl.load(yb_ptr + offs_m, mask=offs_m < M, other=0)
            same, not_self, col_ok = _masks(
                ya, yb, row0, start, offs_m, M, self_offset, HAS_SELF, BLOCK_N, BLOCK_M
            )
            pos = same & not_self & col_ok
            u = lse[:, None] - s
            sp_sum += tl.sum(tl.where(pos, _softplus(u), 0.0), axis=1)
            sig_sum += tl.sum(tl.where(pos, tl.sigmoid(u), 0.0), axis=1)
        tl.store(sp_ptr + offs_n, sp_sum, mask=row_ok)
        tl.store(sig_ptr + offs_n, sig_sum, mask=row_ok)


@triton.jit
def _grad_tile(s, same, not_self, in_range, lse, c, g, POS_PLUS_NEG: tl.constexpr):
    """``dloss / ds`` on one tile of pairs, in either orientation: the masks and the per-anchor
    ``lse``, ``c``, ``g`` come broadcastable to ``s`` (``in_range``: the contrast exists)."""
    if POS_PLUS_NEG:
        p_neg = tl.where((~same) & in_range, tl.exp(s - lse), 0.0)
        p_pos = tl.where(same & not_self & in_range, tl.sigmoid(lse - s), 0.0)
        ds = c * p_neg - g * p_pos
    else:
        ds = c * tl.where(not_self & in_range, tl.exp(s - lse), 0.0)
    # Anchors without a positive have c = g = 0 but may hold inf * 0 = NaN: zero them explicitly.
    return tl.where((c != 0) | (g != 0), ds, 0.0)


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
    DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dA (N, d) fp32 = ds B / t. Grid: (cdiv(N, BLOCK_N),)."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_N
    offs_n = row0 + tl.arange(0, BLOCK_N)
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
        s = _dot_nt(a, b, DOT) * inv_t
        yb = tl.load(yb_ptr + offs_m, mask=offs_m < M, other=0)
        same, not_self, col_ok = _masks(
            ya, yb, row0, start, offs_m, M, self_offset, HAS_SELF, BLOCK_N, BLOCK_M
        )
        ds = _grad_tile(
            s, same, not_self, col_ok, lse[:, None], c[:, None], g[:, None], POS_PLUS_NEG
        )
        # ds is rounded to the input dtype, as FlashAttention does with P (a no-op for fp32).
        ds = ds.to(b.dtype)
        acc += _dot(ds, b, DOT)
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
    DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dB (M, d) fp32 = ds^T A / t. Grid: (cdiv(M, BLOCK_M),); the loop runs over anchor blocks.

    The tiles are computed transposed, ``s^T = B A^T / t`` (contrasts x anchors), so that
    ``ds^T`` is the left operand of ``ds^T A`` as it stands (no transpose of a register tile).
    """
    col0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    offs_m = col0 + tl.arange(0, BLOCK_M)
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
        st = _dot_nt(b, a, DOT) * inv_t  # (BLOCK_M, BLOCK_N)
        same = yb[:, None] == ya[None, :]
        in_range = (offs_m < M)[:, None]
        if HAS_SELF:  # as in _masks: anchor i's self is local contrast i + shift
            shift = (start - col0) + self_offset
            shift = tl.minimum(tl.maximum(shift, -BLOCK_N), BLOCK_M).to(tl.int32)
            not_self = tl.arange(0, BLOCK_M)[:, None] != (tl.arange(0, BLOCK_N) + shift)[None, :]
        else:
            not_self = in_range
        dst = _grad_tile(
            st, same, not_self, in_range, lse[None, :], c[None, :], g[None, :], POS_PLUS_NEG
        )
        acc += _dot(dst.to(a.dtype), a, DOT)
    tl.store(
        db_ptr + offs_m[:, None] * D + offs_d[None, :],
        acc * inv_t,
        mask=(offs_m < M)[:, None] & (offs_d < D)[None, :],
    )


def dot_mode(dtype: torch.dtype, fp32_precision: str) -> str:
    """The ``DOT`` constexpr of the kernels for ``dtype`` inputs (see :func:`_dot`).

    fp32 inputs: ``fp32_precision`` (one of :data:`FP32_PRECISIONS`). Half inputs use the tensor
    cores with fp32 accumulation, except bf16 under the interpreter, whose bf16 ``tl.dot`` is
    wrong (Triton 3.8); there the (bf16-rounded) operands are upcast, which gives the same
    numbers as the tensor cores: products of bf16 values are exact in fp32.
    """
    if dtype == torch.float32:
        if fp32_precision not in FP32_PRECISIONS:
            raise ValueError(
                f"fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}"
            )
        return fp32_precision
    return "ieee" if INTERPRET and dtype == torch.bfloat16 else "half"


KERNELS = ("fwd", "bwd_anchor", "bwd_contrast")


def launch_config(kernel: str, d: int, dot: str) -> dict[str, int]:
    """Tile sizes and launch options of ``supcon_<kernel>_kernel`` for feature size ``d``
    (``d <= MAX_BLOCK_D``) and ``dot`` (:func:`dot_mode`): ``BLOCK_N`` anchors and ``BLOCK_M``
    contrasts per tile, ``BLOCK_D``, ``num_warps``, ``num_stages``.

    Chosen so that no kernel spills registers on sm_90 at d = 64, 128, 256 with either
    denominator (checked by compiling them: ``tests/ops/test_sm90_compile.py``):

    - tensor-core paths (``"half"``, ``"tf32"``): tiles of 64 rows, as a Hopper warpgroup MMA
      (wgmma) takes them. The forward pass (no accumulator tile) runs 8 warps over 64 anchors
      and 64 contrasts a step (32 at d > 128). Each backward kernel accumulates a
      (64, BLOCK_D) fp32 gradient tile for its 64 rows (anchors, or contrasts) while stepping
      through 32 of the other side: 64 registers a thread on 4 warps at BLOCK_D = 128, on 8
      warps at 256.
    - ``"ieee"`` (FMA, no tensor cores): every thread holds whole rows of both operands, so
      32 x 32 tiles over 8 warps; the contrast-gradient kernel steps through 16 anchors at
      d > 128.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    block_d = max(16, triton.next_power_of_2(d))
    if dot == "ieee":
        block_n = 16 if kernel == "bwd_contrast" and block_d > 128 else 32
        block_m, warps = 32, 8
    elif kernel == "fwd":
        block_n, block_m, warps = 64, (64 if block_d <= 128 else 32), 8
    elif kernel == "bwd_anchor":
        block_n, block_m, warps = 64, 32, (4 if block_d <= 128 else 8)
    else:  # bwd_contrast: 64 contrasts per program, 32 anchors a step
        block_n, block_m, warps = 32, 64, (4 if block_d <= 128 else 8)
    return dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, num_stages=2)
