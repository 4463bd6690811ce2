"""``supcon_loss``: every fast backend against ``supcon_loss_reference``, forward and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hermes.ops import SupConLoss, dispatch, supcon_loss, supcon_loss_reference
from hermes.ops.supcon import FP32_PRECISIONS

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (N, M or None for "contrasts = anchors", d, classes, self_offset). Sizes are 1, primes and
# non-multiples of the tile (64 on the GPU); self offsets put some self pairs outside [0, M).
CASES = [
    (1, None, 3, 2, None),
    (37, None, 24, 3, None),
    (67, None, 16, 5, None),
    (5, 71, 17, 3, 0),
    (29, 23, 32, 4, -7),
    (13, 41, 8, 2, None),
]


def _inputs(n, m, d, classes, self_offset, dtype, device, seed=0, label_base=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.randint(0, classes, (n,), generator=g) + label_base
    b = yb = None
    if m is not None:
        b = F.normalize(torch.randn(m, d, generator=g), dim=1)
        yb = torch.randint(0, classes, (m,), generator=g) + label_base
    w = torch.rand(n, generator=g)
    r = torch.randn(n, generator=g)
    return a, y, b, yb, w, r


def _run(fn, a, y, b, yb, w, r, dtype, device, **kw):
    """Loss per anchor, mean loss and the gradients of ``sum(r * loss)`` for a, b, w."""
    a_ = a.to(device, dtype).requires_grad_()
    b_ = None if b is None else b.to(device, dtype).requires_grad_()
    w_ = w.to(device).requires_grad_()
    yb_ = None if yb is None else yb.to(device)
    y_ = y.to(device)
    per = fn(a_, y_, b_, yb_, weights=w_, reduction="none", **kw)
    mean = fn(a_, y_, b_, yb_, weights=w_, reduction="mean", **kw)
    leaves = [t for t in (a_, b_, w_) if t is not None]
    grads = torch.autograd.grad((per * r.to(device)).sum() + mean, leaves)
    return per, mean, grads


def _dispatch_inputs(a, y, b, yb, w, **kw):
    return dict(
        anchors=a,
        labels=y,
        contrasts=b,
        contrast_labels=yb,
        weights=w,
        temperature=kw.get("temperature", 0.07),
        base_temperature=kw.get("base_temperature", 0.07),
        denominator=kw.get("denominator", "all"),
        reduction="none",
        self_offset=kw.get("self_offset"),
    )


def _compare(fast_backend, require_backend, check, case, dtype, denominator, **extra):
    name, device = fast_backend
    n, m, d, classes, off = case
    a, y, b, yb, w, r = _inputs(n, m, d, classes, off, dtype, device, **extra)
    kw = dict(denominator=denominator, temperature=0.1, base_temperature=0.07)
    if off is not None:
        kw["self_offset"] = off
    on_device = [None if t is None else t.to(device) for t in (a, y, b, yb, w)]
    for i in (0, 2):
        if on_device[i] is not None:
            on_device[i] = on_device[i].to(dtype)
    require_backend("supcon_loss", name, _dispatch_inputs(*on_device, **kw))
    per, mean, grads = _run(
        lambda *t, **k: supcon_loss(*t, backend=name, **k), a, y, b, yb, w, r, dtype, device, **kw
    )
    ref = _run(supcon_loss_reference, a, y, b, yb, w, r, torch.float32, "cpu", **kw)
    ref_dt = (
        ref
        if dtype == torch.float32
        else _run(supcon_loss_reference, a, y, b, yb, w, r, dtype, "cpu", **kw)
    )
    assert per.dtype == torch.float32 and per.shape == (n,)
    check(per, ref[0], ref_dt[0], dtype, "forward", "loss per anchor")
    check(mean, ref[1], ref_dt[1], dtype, "forward", "mean loss")
    names = ("anchors", "weights") if b is None else ("anchors", "contrasts", "weights")
    for got, want, want_dt, what in zip(grads, ref[2], ref_dt[2], names, strict=True):
        assert got.dtype == (torch.float32 if what == "weights" else dtype)
        check(got, want, want_dt, dtype, "grad", f"grad {what}")


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}_M{}_d{}_C{}_off{}".format(*c))
def test_matches_reference_fp32(fast_backend, require_backend, check, case, denominator):
    _compare(fast_backend, require_backend, check, case, torch.float32, denominator)


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=["self", "contrasts"])
def test_matches_reference_half(fast_backend, require_backend, check, case, dtype, denominator):
    _compare(fast_backend, require_backend, check, case, dtype, denominator)


def test_arbitrary_int64_labels(fast_backend, require_backend, check):
    """Labels need not be small or contiguous (one huge class id per sample, as in SimCLR)."""
    _compare(
        fast_backend,
        require_backend,
        check,
        (19, 31, 16, 3, 2),
        torch.float32,
        "all",
        label_base=10**12,
    )


EDGE = ["no_positive", "absent_class", "one_class", "zero_weights", "nan"]


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("edge", EDGE)
def test_edge_cases(fast_backend, require_backend, check, edge, denominator):
    name, device = fast_backend
    g = torch.Generator().manual_seed(1)
    n, m, d = 11, 17, 16
    a = F.normalize(torch.randn(n, d, generator=g), dim=1)
    b = F.normalize(torch.randn(m, d, generator=g), dim=1)
    y = torch.randint(0, 3, (n,), generator=g)
    yb = torch.randint(0, 3, (m,), generator=g)
    w = torch.rand(n, generator=g)
    if edge == "no_positive":
        y[0], y[3] = 7, 8  # no contrast carries these labels
    elif edge == "absent_class":
        yb[yb == 1] = 0  # class 1 has anchors but no contrasts
        y[y == 2] = 0  # class 2 has contrasts but no anchors
    elif edge == "one_class":
        y.zero_()
        yb.zero_()
    elif edge == "zero_weights":
        w.zero_()
    elif edge == "nan":
        a[2, 5] = float("nan")
    kw = dict(denominator=denominator, self_offset=1)
    dev = [t.to(device) for t in (a, y, b, yb, w)]
    require_backend("supcon_loss", name, _dispatch_inputs(*dev, **kw))
    for reduction in ("none", "mean"):
        got = supcon_loss(*dev[:4], weights=dev[4], reduction=reduction, backend=name, **kw)
        want = supcon_loss_reference(a, y, b, yb, weights=w, reduction=reduction, **kw)
        check(got, want, None, torch.float32, "forward", f"{edge} {reduction}")
    if edge != "nan":
        r = torch.randn(n, generator=g)
        got = _run(
            lambda *t, **k: supcon_loss(*t, backend=name, **k),
            a,
            y,
            b,
            yb,
            w,
            r,
            torch.float32,
            device,
            **kw,
        )
        want = _run(supcon_loss_reference, a, y, b, yb, w, r, torch.float32, "cpu", **kw)
        for x, z, what in zip(got[2], want[2], ("anchors", "contrasts", "weights"), strict=True):
            check(x, z, None, torch.float32, "grad", f"{edge} grad {what}")


@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_supcon_module(fast_backend, require_backend, check, contrast_mode):
    """The SupContrast drop-in gives the reference's loss and gradient through every backend."""
    name, device = fast_backend
    g = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(9, 2, 16, generator=g), dim=-1)
    labels = torch.randint(0, 3, (9,), generator=g)
    require_backend(
        "supcon_loss",
        name,
        _dispatch_inputs(feats[:, 0].to(device), labels.to(device), None, None, None),
    )
    out = {}
    for backend, dev in ((name, device), ("torch", torch.device("cpu"))):
        f = feats.to(dev).requires_grad_()
        loss = SupConLoss(temperature=0.1, contrast_mode=contrast_mode, backend=backend)(
            f, labels.to(dev)
        )
        out[backend] = (loss, torch.autograd.grad(loss, f)[0])
    check(out[name][0], out["torch"][0], None, torch.float32, "forward", "module loss")
    check(out[name][1], out["torch"][1], None, torch.float32, "grad", "module grad")


def test_triton_custom_ops_trace_under_compile(require_backend):
    """The Triton path is custom ops with fake impls and autograd: opcheck passes and
    ``torch.compile(fullgraph=True)`` traces the public op on it (weights and reduction
    included), forward and backward, without graph breaks.

    On the CPU the compiled graph uses the ``aot_eager`` backend (the kernels themselves run in
    Triton's interpreter either way); on a GPU, Inductor.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(3)
    a = F.normalize(torch.randn(10, 16, generator=g), dim=1).to(device)
    b = F.normalize(torch.randn(7, 16, generator=g), dim=1).to(device)
    y, yb = torch.randint(0, 2, (10,), generator=g), torch.randint(0, 2, (7,), generator=g)
    y, yb = y.to(device), yb.to(device)
    require_backend("supcon_loss", "triton", _dispatch_inputs(a, y, b, yb, None))
    dispatch.load_backends()  # Dynamo does not trace the dispatcher's lazy import

    torch.library.opcheck(
        torch.ops.hermes.triton_supcon_fwd.default,
        (a.requires_grad_(), y, b.requires_grad_(), yb, 0.1, 0.07, 2, True, False, "ieee"),
    )
    fn = torch.compile(
        lambda a, b: supcon_loss(
            a,
            y,
            b,
            yb,
            temperature=0.1,
            denominator="pos_plus_neg",
            self_offset=2,
            backend="triton",
        ),
        fullgraph=True,
        backend="inductor" if device.type == "cuda" else "aot_eager",
    )
    a1, b1 = a.detach().requires_grad_(), b.detach().requires_grad_()
    loss = fn(a1, b1)
    loss.backward()
    want = supcon_loss_reference(
        a.detach(), y, b.detach(), yb, temperature=0.1, denominator="pos_plus_neg", self_offset=2
    )
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert a1.grad is not None and torch.isfinite(a1.grad).all()


@pytest.mark.gpu
def test_triton_memory_is_linear_in_n():
    """Forward and backward at N = 8192, d = 128 stay within a few (N, d) buffers; the
    reference's N x N fp32 similarity matrix alone would be 256 MiB."""
    n, d = 8192, 128
    a = F.normalize(torch.randn(n, d, device="cuda"), dim=1).half().requires_grad_()
    y = torch.randint(0, 10, (n,), device="cuda")
    supcon_loss(a[:64], y[:64], backend="triton").backward()  # compile outside the measurement
    a.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    supcon_loss(a, y, backend="triton").backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 16 * n * d * 4, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("where", ["anchor", "contrast", "self"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_nonfinite_features_give_nan(any_backend, require_backend, value, where, denominator):
    """One rule in every backend: anchor i's loss is NaN when a_i or any contrast holds a
    non-finite value (an anchor without a positive included); the others keep their value."""
    name, device = any_backend
    g = torch.Generator().manual_seed(3)
    n, m, d = 7, 9, 8
    a = F.normalize(torch.randn(n, d, generator=g), dim=1)
    b = F.normalize(torch.randn(m, d, generator=g), dim=1)
    y = torch.randint(0, 3, (n,), generator=g)
    yb = torch.randint(0, 3, (m,), generator=g)
    y[-1] = 9  # no positive anywhere
    if where == "contrast":
        b[2, 3] = value
    else:
        a[1, 3] = value
    if where == "self":
        b = yb = None
    contrasts = a if b is None else b
    bad = ~torch.isfinite(a).all(dim=1) | ~torch.isfinite(contrasts).all()
    dev = [None if t is None else t.to(device) for t in (a, y, b, yb)]
    require_backend("supcon_loss", name, _dispatch_inputs(*dev, None, denominator=denominator))
    per = supcon_loss(*dev, denominator=denominator, reduction="none", backend=name).cpu()
    mean = supcon_loss(*dev, denominator=denominator, backend=name).cpu()
    clean = supcon_loss_reference(
        torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0),
        y,
        None if b is None else torch.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0),
        yb,
        denominator=denominator,
        reduction="none",
    )
    assert torch.equal(torch.isnan(per), bad), f"{name}: {per.tolist()}"
    torch.testing.assert_close(per[~bad], clean[~bad], rtol=1e-5, atol=1e-5)
    assert torch.isnan(mean)


# (N, M or None for "contrasts = anchors", d): no anchor, no contrast, no feature.
EMPTY = [(0, None, 4), (0, 3, 4), (3, 0, 4), (0, 0, 4), (3, None, 0), (2, 3, 0)]


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("case", EMPTY, ids=lambda c: "N{}_M{}_d{}".format(*c))
def test_empty_inputs(any_backend, require_backend, case, denominator):
    name, device = any_backend
    n, m, d = case
    a, y, b, yb, w, r = _inputs(n, m, d, 2, None, torch.float32, device)
    kw = dict(denominator=denominator)
    dev = [None if t is None else t.to(device) for t in (a, y, b, yb, w)]
    require_backend("supcon_loss", name, _dispatch_inputs(*dev, **kw))
    got = _run(
        lambda *t, **k: supcon_loss(*t, backend=name, **k),
        a,
        y,
        b,
        yb,
        w,
        r,
        torch.float32,
        device,
        **kw,
    )
    want = _run(supcon_loss_reference, a, y, b, yb, w, r, torch.float32, "cpu", **kw)
    assert got[0].shape == (n,) and got[1].shape == ()
    for x, z in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2]), strict=True):
        assert x.shape == z.shape
        torch.testing.assert_close(x.detach().cpu(), z.detach(), rtol=1e-5, atol=1e-6)


def _tf32(x: np.ndarray) -> np.ndarray:
    """What the tensor cores read of fp32 values given as TF32 operands: the sign, the exponent
    and the top 10 mantissa bits (the low 13 are dropped, not rounded)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.fixture
def emulated_tf32(monkeypatch):
    """Under Triton's interpreter, ``tl.dot(..., input_precision="tf32")`` as the tensor cores
    do it: fp32 operands cut to TF32, products accumulated in fp32 (the interpreter otherwise
    multiplies every fp32 dot in full fp32). Yields a list that gets one entry per emulated
    dot; on a GPU the kernels are compiled and the fixture yields ``None``."""
    from hermes.kernels import INTERPRET

    if not INTERPRET:
        yield None
        return
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    calls: list[int] = []
    original = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if input_precision == ir.INPUT_PRECISION.TF32 and a.data.dtype == np.float32:
            calls.append(1)
            a = interpreter.TensorHandle(_tf32(a.data), a.dtype)
            b = interpreter.TensorHandle(_tf32(b.data), b.dtype)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
    yield calls


# Documented in hermes.ops.supcon for fp32_precision="tf32", relative to the largest magnitude.
TF32_RTOL = {"forward": 1e-3, "grad": 1e-2}


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
def test_fp32_precision_tf32_accuracy(require_backend, emulated_tf32, denominator):
    """``fp32_precision="tf32"`` (the tensor cores; on the CPU the interpreter with TF32
    operands emulated) keeps the loss within 1e-3 and the gradients within 1e-2 of the fp64
    reference, relative to their largest magnitude, at the method's temperature and d = 128
    (measured: about 3e-4 and 1.5e-3)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(4)
    n, d = 256, 128
    a = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    r = torch.randn(n, generator=g, dtype=torch.float64).to(device)
    kw = dict(temperature=0.07, base_temperature=0.07, denominator=denominator)
    require_backend("supcon_loss", "triton", _dispatch_inputs(a.float(), y, None, None, None, **kw))

    def run(fn, dtype, **extra):
        x = a.to(dtype).requires_grad_()
        per = fn(x, y, reduction="none", **kw, **extra)
        (grad,) = torch.autograd.grad((per.double() * r).sum(), x)
        return per.detach(), grad

    def rel_err(got, want):
        return ((got.double() - want).abs().max() / want.abs().max()).item()

    want = run(supcon_loss_reference, torch.float64)
    got = run(supcon_loss, torch.float32, backend="triton", fp32_precision="tf32")
    errors = rel_err(got[0], want[0]), rel_err(got[1], want[1])
    assert errors[0] <= TF32_RTOL["forward"] and errors[1] <= TF32_RTOL["grad"], errors
    if emulated_tf32 is not None:
        assert emulated_tf32, "no tl.dot ran with input_precision='tf32'"
        assert errors[0] > 1e-6, errors  # the emulation took effect (IEEE fp32 gives ~1e-7)


def test_fp32_precision_is_checked():
    a = F.normalize(torch.randn(4, 8), dim=1)
    with pytest.raises(ValueError, match="fp32_precision must be one of"):
        supcon_loss(a, torch.arange(4) % 2, fp32_precision="tf32x3")
    kernels = pytest.importorskip("hermes.kernels.supcon")
    assert kernels.FP32_PRECISIONS == FP32_PRECISIONS  # the op's list is the kernels'
