"""``dual_threshold``: every fast backend against ``dual_threshold_reference``."""

from __future__ import annotations

import pytest
import torch

from hermes.ops import dual_threshold, dual_threshold_reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (B, C) and (B, C, H, W); 1, primes, and sizes that are not multiples of the entry block.
SHAPES = [(1, 1), (13, 2), (37, 5), (1, 3, 1, 1), (3, 2, 5, 7), (2, 5, 11, 3)]


def _inputs(shape, dtype, device, seed=0, nonfinite=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    valid = torch.rand((shape[0], *shape[2:]), generator=g) > 0.25
    if nonfinite and logits.numel() > 4:
        flat = logits.view(-1)
        flat[1], flat[-2] = float("nan"), float("inf")
    return logits.to(device, dtype), valid.to(device)


def _dispatch_inputs(logits, valid, eta=0.5, hook=None):
    return dict(logits=logits, eta=eta, tau_max=0.95, tau_min=0.5, valid=valid, histogram_hook=hook)


def assert_same_output(got, want, tol=1e-5):
    """Exact labels, masks and counts; fp32 values to ``tol``. A reliable flag may differ only
    where the confidence sits within ``tol`` of its threshold (or the entropy of ``eta``)."""
    want_dev = got.labels.device
    assert got.labels.dtype == torch.int64 and got.reliable.dtype == torch.bool
    assert got.confidence.dtype == torch.float32 and got.entropy.dtype == torch.float32
    torch.testing.assert_close(got.labels, want.labels.to(want_dev))
    torch.testing.assert_close(
        got.confidence.cpu(), want.confidence, rtol=tol, atol=tol, equal_nan=True
    )
    torch.testing.assert_close(got.entropy.cpu(), want.entropy, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(got.thresholds.cpu(), want.thresholds, rtol=tol, atol=tol)
    differ = got.reliable.cpu() != want.reliable
    if differ.any():
        margin = (want.confidence - want.thresholds[want.labels]).abs()
        assert (margin[differ] < tol).all(), "reliable mask differs away from a threshold"
    s, r = got.stats, want.stats
    assert s.histogram.dtype == torch.int64
    torch.testing.assert_close(s.histogram.cpu(), r.histogram)
    for name in (
        "kept_confident",
        "kept_certain",
        "kept_reliable",
        "mean_confidence",
        "mean_entropy",
    ):
        torch.testing.assert_close(
            getattr(s, name).cpu(), getattr(r, name), rtol=tol, atol=tol, msg=name
        )


@pytest.mark.parametrize("with_valid", [False, True], ids=["all", "valid"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(fast_backend, require_backend, shape, dtype, with_valid):
    """Both compute in fp32 from the same logits, so every dtype is held to fp32 tolerance."""
    name, device = fast_backend
    logits, valid = _inputs(shape, dtype, device)
    valid = valid if with_valid else None
    require_backend("dual_threshold", name, _dispatch_inputs(logits, valid))
    got = dual_threshold(logits, eta=0.5, tau_max=0.9, tau_min=0.4, valid=valid, backend=name)
    want = dual_threshold_reference(
        logits.cpu(),
        eta=0.5,
        tau_max=0.9,
        tau_min=0.4,
        valid=None if valid is None else valid.cpu(),
    )
    assert got.labels.shape == (shape[0], *shape[2:])
    assert_same_output(got, want)


EDGE = ["absent_class", "one_class", "all_masked", "all_nonfinite", "eta_tensor"]


@pytest.mark.parametrize("edge", EDGE)
def test_edge_cases(fast_backend, require_backend, edge):
    name, device = fast_backend
    logits, valid = _inputs((4, 3, 5, 6), torch.float32, device, seed=1, nonfinite=False)
    eta: float | torch.Tensor = 0.7
    if edge == "absent_class":
        logits[:, 1] -= 100.0  # nobody picks class 1
    elif edge == "one_class":
        logits[:, 2] += 100.0
    elif edge == "all_masked":
        valid = torch.zeros_like(valid)
    elif edge == "all_nonfinite":
        logits[:, 0] = float("nan")
    elif edge == "eta_tensor":
        eta = torch.tensor(0.7, dtype=torch.float64)  # on the CPU whatever the logits' device
    require_backend("dual_threshold", name, _dispatch_inputs(logits, valid, eta))
    got = dual_threshold(logits, eta=eta, valid=valid, backend=name)
    want = dual_threshold_reference(logits.cpu(), eta=eta, valid=valid.cpu())
    assert_same_output(got, want)
    if edge == "all_masked" or edge == "all_nonfinite":
        assert got.stats.histogram.sum().item() == 0 and not got.reliable.any()


def test_histogram_hook(fast_backend, require_backend):
    """The hook sees the local histogram between the passes; the thresholds come from what it
    returns (as under an all-reduce), while ``stats.histogram`` stays local."""
    name, device = fast_backend
    logits, valid = _inputs((29, 4), torch.float32, device, seed=2)
    seen: list[torch.Tensor] = []

    def hook(hist: torch.Tensor) -> torch.Tensor:
        seen.append(hist.clone())
        return hist + torch.tensor([50, 0, 0, 0], device=hist.device)  # "other ranks" add class 0

    require_backend("dual_threshold", name, _dispatch_inputs(logits, valid, hook=hook))
    got = dual_threshold(logits, eta=1.0, valid=valid, backend=name, histogram_hook=hook)
    want = dual_threshold_reference(
        logits.cpu(),
        eta=1.0,
        valid=valid.cpu(),
        histogram_hook=lambda h: h + torch.tensor([50, 0, 0, 0]),
    )
    assert len(seen) == 1
    torch.testing.assert_close(seen[0].cpu(), want.stats.histogram)
    assert_same_output(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("eta_kind", ["tensor", "float"])
def test_no_host_sync(require_backend, backend, eta_kind):
    """Nothing in the op waits for the GPU (CUDA sync-debug mode raises on a synchronisation),
    with eta a device tensor or a Python float (as the method passes it)."""
    logits = torch.randn(8, 2, 32, 32, device="cuda", dtype=torch.float16)
    valid = torch.rand(8, 32, 32, device="cuda") > 0.1
    eta = torch.tensor(0.5, device="cuda") if eta_kind == "tensor" else 0.5
    require_backend("dual_threshold", backend, _dispatch_inputs(logits, valid, eta))
    dual_threshold(logits, eta=eta, valid=valid, backend=backend)  # warm-up: compile, load
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dual_threshold(logits, eta=eta, valid=valid, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_triton_custom_ops_trace_under_compile(require_backend):
    """opcheck on both passes, and the public op (hook included) under
    ``torch.compile(fullgraph=True)``: no graph break, same output as eager.

    The dispatcher imports backend modules on first use, which Dynamo does not trace, so the
    backends are loaded before compiling (as a trainer does by running eagerly first).
    """
    from hermes.ops import dispatch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Finite logits: opcheck compares outputs without equal_nan.
    logits, valid = _inputs((2, 3, 4, 5), torch.float32, device, seed=4, nonfinite=False)
    require_backend("dual_threshold", "triton", _dispatch_inputs(logits, valid))
    dispatch.load_backends()
    x, v = logits.reshape(2, 3, 20), valid.reshape(2, 20)
    torch.library.opcheck(torch.ops.hermes.triton_dual_threshold_pass1.default, (x, v))
    labels, conf, ent, hist = torch.ops.hermes.triton_dual_threshold_pass1(x, v)
    thr = torch.full((3,), 0.7, device=device)
    eta = torch.full((1,), 0.8, device=device)
    torch.library.opcheck(
        torch.ops.hermes.triton_dual_threshold_pass2.default, (labels, conf, ent, v, thr, eta)
    )

    def run(lg):
        out = dual_threshold(
            lg, eta=0.8, valid=valid, backend="triton", histogram_hook=lambda h: h * 2
        )
        return out.labels, out.reliable, out.thresholds, out.stats.kept_reliable

    compiled = torch.compile(
        run, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager"
    )
    for got, want in zip(compiled(logits), run(logits), strict=True):
        torch.testing.assert_close(got, want)


# No sample, no pixel, or both; with and without a valid mask.
EMPTY_SHAPES = [(0, 3), (0, 3, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0), (0, 2, 0, 0)]


@pytest.mark.parametrize("with_valid", [False, True], ids=["all", "valid"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_empty_inputs(any_backend, require_backend, shape, with_valid):
    """Nothing to label: empty outputs, an empty histogram, thresholds at ``tau_min``."""
    name, device = any_backend
    logits = torch.zeros(shape, device=device)
    valid = torch.ones((shape[0], *shape[2:]), dtype=torch.bool, device=device)
    valid = valid if with_valid else None
    require_backend("dual_threshold", name, _dispatch_inputs(logits, valid))
    got = dual_threshold(logits, eta=0.5, valid=valid, backend=name)
    valid_cpu = None if valid is None else valid.cpu()
    want = dual_threshold_reference(logits.cpu(), eta=0.5, valid=valid_cpu)
    assert got.labels.shape == (shape[0], *shape[2:]) == got.reliable.shape
    assert got.stats.histogram.sum().item() == 0
    assert_same_output(got, want)
