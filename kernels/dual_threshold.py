"""Triton kernels of ``dual_threshold``: two passes over the logits, thresholds in between.

Layout: logits are viewed as (B, C, S) with S = H * W (S = 1 for (B, C)); an *entry* is one
(b, s) pair, flattened as ``e = b * S + s``, and class ``c`` of it lives at ``b*C*S + c*S + s``,
so a block of entries reads each class row contiguously in the (B, C, H, W) layout.

Pass 1 (one read of the logits): per entry the softmax statistics (label, confidence, entropy;
label 0 and NaN for a row with a non-finite logit), and the per-class histogram of the entries
that take part, reduced per block in registers and merged with atomics.
Pass 2 (reads the per-entry outputs of pass 1, never the logits): the class thresholds (computed
on the device from the possibly all-reduced histogram) and ``eta`` are applied; per-class kept
counts and the confidence and entropy sums are merged with atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_CLASSES = 1024


@triton.jit
def dual_threshold_pass1_kernel(
    x_ptr,
    valid_ptr,
    label_ptr,
    conf_ptr,
    ent_ptr,
    hist_ptr,
    E,
    C,
    S,
    eps,
    HAS_VALID: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid: (cdiv(E, BLOCK_E),). ``hist`` (C,) int64 must be zeroed."""
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: E * C may pass 2**31
    offs_e = pid * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_c = tl.arange(0, BLOCK_C)
    e_ok = offs_e < E
    c_ok = offs_c < C
    base = (offs_e // S) * C * S + offs_e % S
    mask = e_ok[:, None] & c_ok[None, :]
    x = tl.load(x_ptr + base[:, None] + offs_c[None, :] * S, mask=mask, other=0.0).to(tl.float32)

    bad = (x != x) | (tl.abs(x) == float("inf"))
    finite = tl.sum((bad & mask).to(tl.int32), axis=1) == 0
    xm = tl.where(mask, x, float("-inf"))
    # Non-finite and padding rows get harmless values here; their outputs are overwritten below.
    xm = tl.where(finite[:, None] & e_ok[:, None], xm, 0.0)
    m = tl.max(xm, axis=1)
    label = tl.argmax(xm, axis=1, tie_break_left=True)
    ex = tl.where(mask, tl.exp(xm - m[:, None]), 0.0)
    z = tl.sum(ex, axis=1)
    z = tl.where(z > 0, z, 1.0)
    p = ex / z[:, None]
    ent = -tl.sum(tl.where(mask, p * tl.log(p + eps), 0.0), axis=1)
    conf = 1.0 / z

    label = tl.where(finite, label, 0).to(tl.int64)
    conf = tl.where(finite, conf, float("nan"))
    ent = tl.where(finite, ent, float("nan"))
    ok = finite & e_ok
    if HAS_VALID:
        ok = ok & (tl.load(valid_ptr + offs_e, mask=e_ok, other=0) != 0)
    tl.store(label_ptr + offs_e, label, mask=e_ok)
    tl.store(conf_ptr + offs_e, conf, mask=e_ok)
    tl.store(ent_ptr + offs_e, ent, mask=e_ok)

    onehot = (label[:, None] == offs_c[None, :]) & ok[:, None]
    counts = tl.sum(onehot.to(tl.int64), axis=0)
    tl.atomic_add(hist_ptr + offs_c, counts, mask=c_ok & (counts > 0))


@triton.jit
def dual_threshold_pass2_kernel(
    label_ptr,
    conf_ptr,
    ent_ptr,
    valid_ptr,
    thr_ptr,
    eta_ptr,
    reliable_ptr,
    kept_ptr,
    sums_ptr,
    E,
    C,
    HAS_VALID: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grid: (cdiv(E, BLOCK_E),). ``kept`` (3, C) int64 (confident, certain, reliable) and
    ``sums`` (2,) fp32 (confidence, entropy over the entries that take part) must be zeroed."""
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: E * C may pass 2**31
    offs_e = pid * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_c = tl.arange(0, BLOCK_C)
    e_ok = offs_e < E
    c_ok = offs_c < C
    label = tl.load(label_ptr + offs_e, mask=e_ok, other=0)
    conf = tl.load(conf_ptr + offs_e, mask=e_ok, other=float("nan"))
    ent = tl.load(ent_ptr + offs_e, mask=e_ok, other=float("nan"))
    ok = e_ok & (conf == conf)  # NaN confidence marks a non-finite row
    if HAS_VALID:
        ok = ok & (tl.load(valid_ptr + offs_e, mask=e_ok, other=0) != 0)
    thr = tl.load(thr_ptr + label, mask=e_ok, other=1.0)
    eta = tl.load(eta_ptr)
    confident = conf > thr
    certain = ent < eta
    reliable = confident & certain & ok
    tl.store(reliable_ptr + offs_e, reliable.to(tl.int8), mask=e_ok)

    onehot = (label[:, None] == offs_c[None, :]) & ok[:, None]
    n_conf = tl.sum((onehot & confident[:, None]).to(tl.int64), axis=0)
    n_cert = tl.sum((onehot & certain[:, None]).to(tl.int64), axis=0)
    n_rel = tl.sum((onehot & reliable[:, None]).to(tl.int64), axis=0)
    tl.atomic_add(kept_ptr + offs_c, n_conf, mask=c_ok & (n_conf > 0))
    tl.atomic_add(kept_ptr + C + offs_c, n_cert, mask=c_ok & (n_cert > 0))
    tl.atomic_add(kept_ptr + 2 * C + offs_c, n_rel, mask=c_ok & (n_rel > 0))
    tl.atomic_add(sums_ptr, tl.sum(tl.where(ok, conf, 0.0), axis=0))
    tl.atomic_add(sums_ptr + 1, tl.sum(tl.where(ok, ent, 0.0), axis=0))


def block_sizes(num_classes: int) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_C): a register tile of about 4096 logits (``num_classes <= MAX_CLASSES``)."""
    block_c = triton.next_power_of_2(num_classes)
    return max(4, min(1024, 4096 // block_c)), block_c
