"""Triton kernels of ``inter_task_attention`` (the IAS block after its convolutions).

With ``c = g[:, :, None, None] * x`` (never stored), ``P = [max_C c, mean_C c]`` (B, 2, H, W),
``z = conv2d(P, w, bias, padding=K // 2)``, ``a = sigmoid(z)`` and ``y = a * c``:

Forward, two kernels, each one read of the feature map ``x``:
    ``inter_task_attention_pool_kernel``  (gate apply + channel pooling): P, and the number of channels that
                         attain the max (the max's gradient is shared among ties, as in torch).
    ``inter_task_attention_apply_kernel`` (spatial gate + product): ``a`` from the K x K conv of P, then ``y``.
Backward, two kernels, each one read of ``x`` and ``dy``:
    ``inter_task_attention_bwd_gate_kernel``: ``dz = sum_C(dy * c) * a (1 - a)``, and per block the partial
                             sums of ``dw`` and ``dbias`` (reduced by the caller: no atomics).
    ``inter_task_attention_bwd_feature_kernel``: ``dP`` by the transposed conv of ``dz``, then
                             ``dc = a dy + [c = max] dP_max / n_max + dP_mean / C``,
                             ``dx = g dc`` and per block the partial sums of ``dg = sum_HW x dc``.
All arithmetic is fp32; ``x``/``dy`` may be fp16, bf16 or fp32. Grid: (cdiv(H W, BLOCK_P), B): pixel
blocks on axis 0, the batch on axis 1 (a CUDA grid's axis 1 stops at 65,535); offsets are 64-bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_KERNEL_SIZE = 7


@triton.jit
def inter_task_attention_pool_kernel(
    x_ptr,
    g_ptr,
    pooled_ptr,
    cnt_ptr,
    C,
    HW,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """pooled (B, 2, HW) fp32: channel max and mean of ``g x``; cnt (B, HW) fp32: ties at the max."""
    b = tl.program_id(1).to(tl.int64)  # the batch on axis 1, pixel blocks on axis 0
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < HW
    m = tl.full([BLOCK_P], float("-inf"), tl.float32)
    cnt = tl.zeros([BLOCK_P], tl.float32)
    total = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        mask = c_ok[:, None] & p_ok[None, :]
        x = tl.load(x_ptr + (b * C + offs_c[:, None]) * HW + offs_p[None, :], mask=mask, other=0.0)
        g = tl.load(g_ptr + b * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        v = g[:, None] * x.to(tl.float32)
        total += tl.sum(tl.where(mask, v, 0.0), axis=0)
        vm = tl.where(mask, v, float("-inf"))
        bm = tl.max(vm, axis=0)
        bc = tl.sum((vm == bm[None, :]).to(tl.float32), axis=0)
        cnt = tl.where(bm > m, bc, tl.where(bm == m, cnt + bc, cnt))
        m = tl.maximum(m, bm)
    tl.store(pooled_ptr + b * 2 * HW + offs_p, m, mask=p_ok)
    tl.store(pooled_ptr + b * 2 * HW + HW + offs_p, total / C, mask=p_ok)
    tl.store(cnt_ptr + b * HW + offs_p, cnt, mask=p_ok)


@triton.jit
def _conv_at(
    src_ptr,
    w_ptr,
    offs_p,
    p_ok,
    H,
    W,
    HW,
    FLIP: tl.constexpr,
    KSIZE: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """sum over the two maps and the K x K window of w * src (zero padding), at pixels offs_p.

    ``src_ptr`` points at two maps of HW (``FLIP=False``: the forward correlation) or at one map
    used for both weight channels (``FLIP=True``: the transposed conv, one result per channel).
    """
    h = offs_p // W
    w = offs_p % W
    acc0 = tl.zeros([BLOCK_P], tl.float32)
    acc1 = tl.zeros([BLOCK_P], tl.float32)
    for i in tl.static_range(KSIZE):
        for j in tl.static_range(KSIZE):
            if FLIP:
                hh = h - (i - KSIZE // 2)
                ww = w - (j - KSIZE // 2)
            else:
                hh = h + (i - KSIZE // 2)
                ww = w + (j - KSIZE // 2)
            inb = p_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            w0 = tl.load(w_ptr + i * KSIZE + j).to(tl.float32)
            w1 = tl.load(w_ptr + KSIZE * KSIZE + i * KSIZE + j).to(tl.float32)
            if FLIP:
                v = tl.load(src_ptr + hh * W + ww, mask=inb, other=0.0)
                acc0 += w0 * v
                acc1 += w1 * v
            else:
                v0 = tl.load(src_ptr + hh * W + ww, mask=inb, other=0.0)
                v1 = tl.load(src_ptr + HW + hh * W + ww, mask=inb, other=0.0)
                acc0 += w0 * v0 + w1 * v1
    return acc0, acc1


@triton.jit
def inter_task_attention_apply_kernel(
    x_ptr,
    g_ptr,
    w_ptr,
    bias_ptr,
    pooled_ptr,
    a_ptr,
    y_ptr,
    C,
    H,
    W,
    KSIZE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """a (B, HW) fp32 = sigmoid(conv(pooled) + bias); y (B, C, HW) = a g x in x's dtype."""
    HW = H * W
    b = tl.program_id(1).to(tl.int64)  # the batch on axis 1, pixel blocks on axis 0
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < HW
    z, _ = _conv_at(pooled_ptr + b * 2 * HW, w_ptr, offs_p, p_ok, H, W, HW, False, KSIZE, BLOCK_P)
    a = tl.sigmoid(z + tl.load(bias_ptr).to(tl.float32))
    tl.store(a_ptr + b * HW + offs_p, a, mask=p_ok)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        mask = c_ok[:, None] & p_ok[None, :]
        ptrs = (b * C + offs_c[:, None]) * HW + offs_p[None, :]
        x = tl.load(x_ptr + ptrs, mask=mask, other=0.0)
        g = tl.load(g_ptr + b * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        y = a[None, :] * g[:, None] * x.to(tl.float32)
        tl.store(y_ptr + ptrs, y.to(x.dtype), mask=mask)


@triton.jit
def inter_task_attention_bwd_gate_kernel(
    dy_ptr,
    x_ptr,
    g_ptr,
    pooled_ptr,
    a_ptr,
    dz_ptr,
    dwb_ptr,
    C,
    H,
    W,
    KSIZE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """dz (B, HW) fp32; dwb (B * n_blocks, 2 K K + 1) fp32: this block's parts of dw and dbias."""
    HW = H * W
    b = tl.program_id(1).to(tl.int64)  # the batch on axis 1, pixel blocks on axis 0
    pb = tl.program_id(0).to(tl.int64)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < HW
    da = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        mask = c_ok[:, None] & p_ok[None, :]
        ptrs = (b * C + offs_c[:, None]) * HW + offs_p[None, :]
        x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        da += tl.sum(dy * g[:, None] * x, axis=0)
    a = tl.load(a_ptr + b * HW + offs_p, mask=p_ok, other=0.0)
    dz = tl.where(p_ok, da * a * (1.0 - a), 0.0)
    tl.store(dz_ptr + b * HW + offs_p, dz, mask=p_ok)

    row = (b * tl.num_programs(0) + pb) * (2 * KSIZE * KSIZE + 1)
    h = offs_p // W
    w = offs_p % W
    src = pooled_ptr + b * 2 * HW
    for i in tl.static_range(KSIZE):
        for j in tl.static_range(KSIZE):
            hh = h + (i - KSIZE // 2)
            ww = w + (j - KSIZE // 2)
            inb = p_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            v0 = tl.load(src + hh * W + ww, mask=inb, other=0.0)
            v1 = tl.load(src + HW + hh * W + ww, mask=inb, other=0.0)
            tl.store(dwb_ptr + row + i * KSIZE + j, tl.sum(dz * v0, axis=0))
            tl.store(dwb_ptr + row + KSIZE * KSIZE + i * KSIZE + j, tl.sum(dz * v1, axis=0))
    tl.store(dwb_ptr + row + 2 * KSIZE * KSIZE, tl.sum(dz, axis=0))


@triton.jit
def inter_task_attention_bwd_feature_kernel(
    dy_ptr,
    x_ptr,
    g_ptr,
    w_ptr,
    pooled_ptr,
    cnt_ptr,
    a_ptr,
    dz_ptr,
    dx_ptr,
    dg_ptr,
    C,
    H,
    W,
    KSIZE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """dx (B, C, HW) in x's dtype; dg (B, n_blocks, C) fp32: this block's part of d gate."""
    HW = H * W
    b = tl.program_id(1).to(tl.int64)  # the batch on axis 1, pixel blocks on axis 0
    pb = tl.program_id(0).to(tl.int64)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < HW
    d_max, d_mean = _conv_at(dz_ptr + b * HW, w_ptr, offs_p, p_ok, H, W, HW, True, KSIZE, BLOCK_P)
    m = tl.load(pooled_ptr + b * 2 * HW + offs_p, mask=p_ok, other=0.0)
    cnt = tl.load(cnt_ptr + b * HW + offs_p, mask=p_ok, other=1.0)
    a = tl.load(a_ptr + b * HW + offs_p, mask=p_ok, other=0.0)
    d_max = d_max / tl.where(cnt > 0, cnt, 1.0)
    d_mean = d_mean / C
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        mask = c_ok[:, None] & p_ok[None, :]
        ptrs = (b * C + offs_c[:, None]) * HW + offs_p[None, :]
        x_raw = tl.load(x_ptr + ptrs, mask=mask, other=0.0)
        x = x_raw.to(tl.float32)
        dy = tl.load(dy_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        v = g[:, None] * x
        dc = a[None, :] * dy + d_mean[None, :]
        dc += tl.where(v == m[None, :], d_max[None, :], 0.0)
        dc = tl.where(mask, dc, 0.0)
        tl.store(dx_ptr + ptrs, (g[:, None] * dc).to(x_raw.dtype), mask=mask)
        tl.store(
            dg_ptr + (b * tl.num_programs(0) + pb) * C + offs_c, tl.sum(x * dc, axis=1), mask=c_ok
        )


# Warps of every IAS kernel. With 256-pixel blocks and 16-channel chunks a thread holds 16
# values of each (chunk x pixels) tile; 32-channel chunks (or 4 warps) made the apply and
# feature-gradient kernels spill registers on sm_90 (tests/ops/test_sm90_compile.py).
NUM_WARPS = 8


def block_sizes(channels: int, pixels: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P): channel chunk and pixel block of one program (``NUM_WARPS`` warps)."""
    return min(16, triton.next_power_of_2(channels)), min(
        256, max(16, triton.next_power_of_2(pixels))
    )
