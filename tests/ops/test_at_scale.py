"""The fused ops on a GPU at the sizes the method runs them (``gpu``-marked: skipped without a
CUDA device; ``make gpu-check`` runs them).

- ``supcon_loss``: N = M = 4096, d = 64, 128, 256; fp32 through both ``fp32_precision`` paths
  and bf16; loss and gradients against the reference computed in fp64 on the GPU.
- ``dual_threshold``: 16 x 2 x 224 x 224 (the segmentation batch) and 150 classes.
- ``inter_task_attention``: the four depths of the paper's classification encoder (Res2Net-101
  at 224 px, strides 2, 4, 8, 16: 64, 256, 512, 1024 channels), output and gradients against
  the fp64 reference.
- Every op twice on the same inputs, compared bit for bit where :mod:`hermes.ops.dispatch`
  promises determinism; no host synchronisation inside any op
  (``torch.cuda.set_sync_debug_mode("error")``); non-contiguous inputs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from hermes.ops import (
    dispatch,
    dual_threshold,
    dual_threshold_reference,
    inter_task_attention,
    inter_task_attention_reference,
    supcon_loss,
    supcon_loss_reference,
)

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ("triton", "cuda")
# fp32 tolerances, relative to the reference's largest magnitude (see tests/ops/conftest.py),
# and those documented for fp32_precision="tf32" (hermes.ops.supcon).
FP32_RTOL = {"forward": 1e-5, "grad": 1e-4}
TF32_RTOL = {"forward": 1e-3, "grad": 1e-2}
HALF_ATOL = {"forward": 1e-4, "grad": 1e-3}


def _require(op: str, backend: str, inputs: dict) -> None:
    device = next(v.device for v in inputs.values() if isinstance(v, torch.Tensor))
    try:
        dispatch.select(op, backend, device, inputs)
    except RuntimeError as exc:
        pytest.skip(str(exc))


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-12)).item()


def _assert_close(got, want64, want_dt, kind: str, path: str, what: str, factor=2.0) -> None:
    """``got`` against the fp64 reference: fp32 and tf32 with their relative tolerances, half
    precision with flash-attention's rule (at most ``factor`` times the error of the
    same-dtype reference, plus an atol relative to the largest magnitude)."""
    err = _rel_err(got, want64)
    if path == "fp32-ieee":
        bound = FP32_RTOL[kind]
    elif path == "fp32-tf32":
        bound = TF32_RTOL[kind]
    else:
        bound = factor * _rel_err(want_dt, want64) + HALF_ATOL[kind]
    assert err <= bound, f"{what} ({path}, {kind}): relative error {err:.3g} > {bound:.3g}"


@contextlib.contextmanager
def _no_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def _deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# --------------------------------------------------------------------------------------------
# supcon_loss
# --------------------------------------------------------------------------------------------

SUPCON_PATHS = {
    "fp32-ieee": (torch.float32, "ieee"),
    "fp32-tf32": (torch.float32, "tf32"),
    "bf16": (torch.bfloat16, "ieee"),
}


def _supcon_inputs(n: int, d: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = F.normalize(torch.randn(n, d, device="cuda", dtype=torch.float64, generator=g), dim=1)
    y = torch.randint(0, 10, (n,), device="cuda", generator=g)
    r = torch.randn(n, device="cuda", dtype=torch.float64, generator=g)
    return a, y, r


def _supcon_run(fn, a, y, r, dtype, **kw):
    """Per-anchor loss and the gradient of ``sum(r * loss)`` for the anchors (a (N, d) leaf of
    ``dtype`` built from ``a``)."""
    x = a.detach().to(dtype, copy=True).requires_grad_()
    per = fn(x, y, reduction="none", **kw)
    (grad,) = torch.autograd.grad((per.double() * r).sum(), x)
    return per.detach(), grad


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("path", list(SUPCON_PATHS))
@pytest.mark.parametrize("d", [64, 128, 256])
def test_supcon_4096_against_fp64(d, path, denominator):
    dtype, precision = SUPCON_PATHS[path]
    a, y, r = _supcon_inputs(4096, d)
    kw = dict(temperature=0.07, base_temperature=0.07, denominator=denominator)
    _require(
        "supcon_loss",
        "triton",
        dict(
            anchors=a.to(dtype),
            labels=y,
            contrasts=None,
            contrast_labels=None,
            weights=None,
            reduction="none",
            self_offset=None,
            fp32_precision=precision,
            **kw,
        ),
    )
    got = _supcon_run(supcon_loss, a, y, r, dtype, backend="triton", fp32_precision=precision, **kw)
    want64 = _supcon_run(supcon_loss_reference, a, y, r, torch.float64, **kw)
    want_dt = _supcon_run(supcon_loss_reference, a, y, r, dtype, **kw)
    _assert_close(got[0], want64[0], want_dt[0], "forward", path, "loss per anchor")
    # bf16: the kernel rounds ds to bf16 before its second product (as FlashAttention rounds P),
    # where the same-dtype reference differentiates in fp32 and rounds only the result: 3 times
    # its error (measured under the interpreter at N = 4096, d = 64 and 128: 1.9 to 2.0 times).
    _assert_close(got[1], want64[1], want_dt[1], "grad", path, "grad anchors", factor=3.0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_supcon_non_contiguous_repeatable_no_sync(backend):
    """Strided anchors and contrasts (views into wider buffers) against the fp64 reference,
    forward and backward without a host synchronisation; the ``cuda`` backend gives the same
    bits twice in any mode, the ``triton`` backend under ``torch.use_deterministic_algorithms``
    (where the dispatcher now chooses it)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    wide_a = F.normalize(torch.randn(2048, 256, device="cuda", generator=g), dim=1)
    wide_b = F.normalize(torch.randn(3000, 128, device="cuda", generator=g), dim=1)
    a, b = wide_a[:, ::2], wide_b.t().contiguous().t()  # stride-2 rows; column-major
    assert not a.is_contiguous() and not b.is_contiguous()
    y = torch.randint(0, 7, (2048,), device="cuda", generator=g)
    yb = torch.randint(0, 7, (3000,), device="cuda", generator=g)
    kw = dict(temperature=0.1, base_temperature=0.07, self_offset=100, reduction="mean")
    inputs = dict(anchors=a, labels=y, contrasts=b, contrast_labels=yb, weights=None, **kw)
    _require("supcon_loss", backend, dict(denominator="all", fp32_precision="ieee", **inputs))

    def run():
        a_, b_ = a.detach().requires_grad_(), b.detach().requires_grad_()
        loss = supcon_loss(a_, y, b_, yb, backend=backend, **kw)
        loss.backward()
        return loss.detach(), a_.grad, b_.grad

    run()  # compile, load
    with _no_host_sync():
        first = run()
    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    want = supcon_loss_reference(a64, y, b64, yb, **kw)
    want.backward()
    assert _rel_err(first[0], want) <= FP32_RTOL["forward"]
    assert _rel_err(first[1], a64.grad) <= FP32_RTOL["grad"]
    assert _rel_err(first[2], b64.grad) <= FP32_RTOL["grad"]
    with _deterministic() if backend == "triton" else contextlib.nullcontext():
        second, third = run(), run()
    for x, z in zip(second, third, strict=True):
        assert torch.equal(x, z), f"{backend}: two runs differ"


def test_supcon_cuda_is_never_chosen_automatically_next_to_triton():
    a = F.normalize(torch.randn(64, 300, device="cuda", dtype=torch.float64), dim=1)
    inputs = dict(
        anchors=a,
        labels=torch.arange(64, device="cuda") % 3,
        contrasts=None,
        contrast_labels=None,
        temperature=0.1,
        base_temperature=0.07,
        weights=None,
        denominator="all",
        reduction="mean",
        self_offset=None,
        fp32_precision="ieee",
    )
    dispatch.load_backends()
    if not dispatch.is_registered("supcon_loss", "triton"):
        pytest.skip("triton unavailable")
    _require("supcon_loss", "cuda", inputs)
    # fp64 and d = 300: Triton declines; the CUDA kernel could run them but is not chosen
    assert dispatch.select("supcon_loss", None, a.device, inputs).backend == "torch"
    assert dispatch.select("supcon_loss", "cuda", a.device, inputs).backend == "cuda"


# --------------------------------------------------------------------------------------------
# dual_threshold
# --------------------------------------------------------------------------------------------


def _check_dual_threshold(got, want, logits, valid, eta, tol=1e-5):
    """Labels, confidence and entropy against the reference (a tie at the max may go either
    way: the label must attain the max); the reliable mask equal away from the thresholds;
    the statistics consistent with the op's own per-pixel outputs."""
    x = logits.float().movedim(1, -1)
    top2 = x.topk(2, dim=-1).values if x.shape[-1] > 1 else x.expand(*x.shape[:-1], 2)
    tie = top2[..., 0] == top2[..., 1]
    assert torch.equal(got.labels[~tie], want.labels[~tie])
    assert torch.equal(x.gather(-1, got.labels[..., None])[..., 0][tie], top2[..., 0][tie])
    torch.testing.assert_close(got.confidence, want.confidence, rtol=tol, atol=tol)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=tol, atol=tol)
    near = ((want.confidence - want.thresholds[want.labels]).abs() < tol) | (
        (want.entropy - eta).abs() < tol
    )
    assert torch.equal(got.reliable[~near], want.reliable[~near])
    ok = torch.ones_like(got.reliable) if valid is None else valid
    c = logits.shape[1]
    hist = torch.bincount(got.labels[ok], minlength=c)
    assert torch.equal(got.stats.histogram, hist)
    kept = torch.bincount(got.labels[ok & got.reliable], minlength=c)
    torch.testing.assert_close(got.stats.kept_reliable, kept.float() / hist.clamp(min=1))
    torch.testing.assert_close(
        got.stats.mean_confidence, got.confidence[ok].mean(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(16, 2, 224, 224), (2, 150, 128, 128)], ids=["seg", "C150"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_dual_threshold_at_scale(backend, shape, dtype):
    """Against the reference on the GPU; channels-last logits (non-contiguous in (B, C, H, W)
    order) with a valid mask; twice, the per-pixel outputs and the integer statistics equal bit
    for bit (the confidence and entropy means are summed with atomics: not promised); no host
    synchronisation with a float eta."""
    g = torch.Generator(device="cuda").manual_seed(2)
    logits = (3 * torch.randn(shape, device="cuda", generator=g)).to(dtype)
    logits = logits.to(memory_format=torch.channels_last)
    valid = torch.rand((shape[0], *shape[2:]), device="cuda", generator=g) > 0.1
    eta = 0.5
    _require(
        "dual_threshold",
        backend,
        dict(logits=logits, eta=eta, tau_max=0.95, tau_min=0.5, valid=valid, histogram_hook=None),
    )
    got = dual_threshold(logits, eta=eta, valid=valid, backend=backend)
    want = dual_threshold_reference(logits, eta=eta, valid=valid)
    _check_dual_threshold(got, want, logits, valid, eta)
    with _no_host_sync():
        again = dual_threshold(logits, eta=eta, valid=valid, backend=backend)
    for name in ("labels", "confidence", "entropy", "reliable", "thresholds"):
        assert torch.equal(getattr(got, name), getattr(again, name)), name
    for name in ("histogram", "kept_confident", "kept_certain", "kept_reliable"):
        assert torch.equal(getattr(got.stats, name), getattr(again.stats, name)), name


# --------------------------------------------------------------------------------------------
# inter_task_attention
# --------------------------------------------------------------------------------------------

# (channels, side) after the Res2Net-101 stages of the classification encoder at 224 px.
IAS_DEPTHS = [(64, 112), (256, 56), (512, 28), (1024, 14)]


def _inter_task_attention_inputs(c: int, side: int, batch: int = 8, seed: int = 3):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(batch, c, side, side, device="cuda", dtype=torch.float64, generator=g)
    gate = torch.rand(batch, c, device="cuda", dtype=torch.float64, generator=g)
    w = 0.3 * torch.randn(1, 2, 3, 3, device="cuda", dtype=torch.float64, generator=g)
    bias = torch.randn(1, device="cuda", dtype=torch.float64, generator=g)
    grad = torch.randn(x.shape, device="cuda", dtype=torch.float64, generator=g)
    return (x, gate, w, bias), grad


def _inter_task_attention_run(fn, inputs, grad, dtype, channels_last=False):
    """Output and the gradients of ``sum(y * grad)`` for the four inputs (the feature and the
    gate in ``dtype``, the conv parameters in fp32, or all fp64)."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x, gate, w, bias = (t.detach() for t in inputs)
    x = x.to(dtype, copy=True)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    leaves = [x.requires_grad_(), gate.to(dtype, copy=True).requires_grad_()]
    leaves += [w.to(pdt, copy=True).requires_grad_(), bias.to(pdt, copy=True).requires_grad_()]
    y = fn(*leaves)
    grads = torch.autograd.grad((y.double() * grad).sum(), leaves)
    return y.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("depth", IAS_DEPTHS, ids=lambda c: f"C{c[0]}_{c[1]}px")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_inter_task_attention_at_the_four_depths(backend, depth, dtype):
    """Output and the four gradients against the fp64 reference with a channels-last feature;
    twice, bit for bit (both GPU backends reduce without atomics); no host synchronisation."""
    inputs, grad = _inter_task_attention_inputs(*depth)
    names = ("cls_feature", "gate", "spatial_weight", "spatial_bias")
    _require(
        "inter_task_attention",
        backend,
        # the dtypes the run below passes: feature and gate in ``dtype``, conv parameters in fp32
        dict(
            zip(
                names,
                [t.to(dtype) for t in inputs[:2]] + [t.float() for t in inputs[2:]],
                strict=True,
            )
        ),
    )

    def fn(*t):
        return inter_task_attention(*t, backend=backend)

    first = _inter_task_attention_run(fn, inputs, grad, dtype, channels_last=True)  # compile, load
    with _no_host_sync():
        got = _inter_task_attention_run(fn, inputs, grad, dtype, channels_last=True)
    want64 = _inter_task_attention_run(inter_task_attention_reference, inputs, grad, torch.float64)
    want_dt = _inter_task_attention_run(inter_task_attention_reference, inputs, grad, dtype)
    path = "fp32-ieee" if dtype == torch.float32 else "half"
    want64_grads = list(want64[1])
    if path == "half":
        # The conv parameters' gradients (the bias, 2 k^2 weights) are sums over all B H W
        # pixels, a few numbers: against fp64 on the unrounded inputs their error is mostly one
        # draw of the rounding of the feature, gate and upstream gradient to ``dtype``, shared
        # by every half-precision implementation (fp32 arithmetic on the bf16-rounded inputs
        # failed the rule on 1 of 8 draws at 512 x 28 x 28). Both they and the same-dtype
        # reference are measured against fp64 on the rounded inputs instead.
        rounded = [t.to(dtype).double() for t in inputs[:2]] + list(inputs[2:])
        _, on_rounded = _inter_task_attention_run(
            inter_task_attention_reference, rounded, grad.to(dtype).double(), torch.float64
        )
        want64_grads[2:] = on_rounded[2:]
    _assert_close(got[0], want64[0], want_dt[0], "forward", path, "y")
    for x, z, z_dt, what in zip(got[1], want64_grads, want_dt[1], names, strict=True):
        _assert_close(x, z, z_dt, "grad", path, f"grad {what}")
    assert torch.equal(first[0], got[0])
    for x, z in zip(first[1], got[1], strict=True):
        assert torch.equal(x, z), f"{backend}: two runs differ"
