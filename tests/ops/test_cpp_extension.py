"""Tests of the compiled extension ``hermes._C`` itself: that it is built and registered, its
operator registrations (schemas, fake and autograd implementations), its input checks, its
thread-count independence, its memory, and its kernels against the references on sizes that
cross the CPU tiles. The op-level comparisons over every backend live in test_supcon.py,
test_dual_threshold.py and test_inter_task_attention.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from hermes.ops import (
    dispatch,
    dual_threshold,
    dual_threshold_reference,
    inter_task_attention,
    supcon_loss,
    supcon_loss_reference,
)
from hermes.ops.dual_threshold import class_thresholds

_BUILD_EXPECTED = os.environ.get("HERMES_NO_CPP", "") != "1" and shutil.which("c++") is not None


def _backend():
    try:
        from hermes.ops import cpp_backend
    except ImportError as exc:
        if _BUILD_EXPECTED:
            pytest.fail(f"hermes._C should have been built (a C++ compiler is present): {exc}")
        pytest.skip(f"hermes._C not built: {exc}")
    return cpp_backend


@pytest.fixture(scope="module")
def cb():
    return _backend()


def _features(n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


def _labels(n: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Build and registration
# ---------------------------------------------------------------------------------------------


def test_extension_registers_cpu_kernels_for_every_op(cb):
    for op in (
        "supcon_fwd",
        "supcon_bwd",
        "dual_threshold_pass1",
        "dual_threshold_pass2",
        "inter_task_attention_fwd",
        "inter_task_attention_bwd",
    ):
        assert cb.has_kernel(op, "cpu"), op
    table = dispatch.available()
    assert all(table[op]["cpp"] == "registered" for op in dispatch.OPS), table


def test_extension_links_openmp(cb):
    import hermes._C

    if shutil.which("ldd") is None:
        pytest.skip("no ldd to read the shared library's dependencies")
    deps = subprocess.run(["ldd", hermes._C.__file__], capture_output=True, text=True).stdout
    assert "gomp" in deps or "omp" in deps, deps


def test_cuda_kernels_registered_when_built_with_cuda(cb):
    # With a GPU, `pip install -e .` builds the CUDA part too; without one it is a compile check.
    if torch.cuda.is_available() and torch.version.cuda is not None:
        assert cb.has_kernel("supcon_fwd", "cuda")
    reasons = cb.supcon.not_supported_reasons("cuda")(anchors=torch.zeros(2, 3))
    assert reasons and "cuda" in reasons[0]


@pytest.mark.parametrize("pos_plus_neg", [False, True])
def test_opcheck_supcon(cb, pos_plus_neg):
    a = _features(9, 5).requires_grad_()
    b = _features(11, 5, seed=3).requires_grad_()
    args = (a, _labels(9, 3), b, _labels(11, 3, seed=2), 0.1, 0.07, 2, pos_plus_neg)
    torch.library.opcheck(torch.ops.hermes.supcon_fwd.default, args)


def test_opcheck_inter_task_attention(cb):
    args = (
        torch.randn(2, 3, 4, 5, requires_grad=True),
        torch.rand(2, 3, requires_grad=True),
        torch.randn(1, 2, 3, 3, requires_grad=True),
        torch.randn(1, requires_grad=True),
    )
    torch.library.opcheck(torch.ops.hermes.inter_task_attention_fwd.default, args)


def test_opcheck_dual_threshold(cb):
    logits = torch.randn(2, 3, 7)
    torch.library.opcheck(
        torch.ops.hermes.dual_threshold_pass1.default, (logits, torch.rand(2, 7) > 0.5)
    )
    labels, conf, ent, ok, hist = torch.ops.hermes.dual_threshold_pass1(
        logits, torch.empty(0, dtype=torch.bool)
    )
    torch.library.opcheck(
        torch.ops.hermes.dual_threshold_pass2.default,
        (labels, conf, ent, ok, class_thresholds(hist, 0.95, 0.5), torch.tensor(0.5)),
    )


# ---------------------------------------------------------------------------------------------
# Input checks (TORCH_CHECK) name the argument and what was expected
# ---------------------------------------------------------------------------------------------


def test_supcon_checks_inputs(cb):
    a, y = _features(4, 3), _labels(4, 2)
    op = torch.ops.hermes.supcon_fwd
    with pytest.raises(RuntimeError, match=r"anchors must be \(N, d\)"):
        op(a[0], y, a, y, 0.1, 0.1, 0, False)
    with pytest.raises(RuntimeError, match="labels must be int64"):
        op(a, y.int(), a, y, 0.1, 0.1, 0, False)
    with pytest.raises(RuntimeError, match="upcast half precision"):
        op(a.half(), y, a.half(), y, 0.1, 0.1, 0, False)
    with pytest.raises(RuntimeError, match=r"contrasts must be \(M, 3\)"):
        op(a, y, a[:, :2], y, 0.1, 0.1, 0, False)
    with pytest.raises(RuntimeError, match="temperature must be > 0"):
        op(a, y, a, y, 0.0, 0.1, 0, False)
    with pytest.raises(RuntimeError, match="contrast_labels must be int64 of shape"):
        op(a, y, a, y[:3], 0.1, 0.1, 0, False)


def test_dual_threshold_and_inter_task_attention_check_inputs(cb):
    with pytest.raises(RuntimeError, match="must have 3 dimensions"):
        torch.ops.hermes.dual_threshold_pass1(torch.randn(2, 3), torch.empty(0, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="valid must be bool of shape"):
        torch.ops.hermes.dual_threshold_pass1(
            torch.randn(2, 3, 4), torch.ones(2, 5, dtype=torch.bool)
        )
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(RuntimeError, match="k odd"):
        torch.ops.hermes.inter_task_attention_fwd(
            x, torch.rand(1, 2), torch.randn(1, 2, 2, 2), torch.zeros(1)
        )
    with pytest.raises(RuntimeError, match=r"gate must be \(1, 2\)"):
        torch.ops.hermes.inter_task_attention_fwd(
            x, torch.rand(2, 2), torch.randn(1, 2, 3, 3), torch.zeros(1)
        )


# ---------------------------------------------------------------------------------------------
# Kernels against the references on sizes that cross the tiles (128 anchors x 512 contrasts)
# ---------------------------------------------------------------------------------------------


def _compare_supcon(cb, n, m, d, k, denominator, self_offset, with_contrasts, reduction="none"):
    a = _features(n, d).requires_grad_()
    y = _labels(n, k)
    b = _features(m, d, seed=5).requires_grad_() if with_contrasts else None
    yb = _labels(m, k, seed=6) if with_contrasts else None
    w = torch.rand(n, generator=torch.Generator().manual_seed(7))
    kw = dict(
        temperature=0.1,
        base_temperature=0.07,
        weights=w,
        denominator=denominator,
        reduction=reduction,
        self_offset=self_offset if with_contrasts else None,
    )
    inputs = [a] + ([b] if with_contrasts else [])
    ref = supcon_loss_reference(a, y, b, yb, **kw)
    out = supcon_loss(a, y, b, yb, backend="cpp", **kw)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * grad).sum(), inputs)
    out_grads = torch.autograd.grad((out * grad).sum(), inputs)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    scale = ref.abs().max().clamp(min=1e-6)
    torch.testing.assert_close(out, ref, atol=1e-5 * scale.item(), rtol=1e-5)
    for o, r in zip(out_grads, ref_grads, strict=True):
        torch.testing.assert_close(o, r, atol=1e-4 * r.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize(
    "n, m, d, k, self_offset, with_contrasts",
    [
        (1, 1, 1, 1, None, False),
        (129, 129, 7, 3, None, False),
        (131, 517, 13, 4, 5, True),
        (3, 600, 16, 2, -1, True),
        (257, 2, 8, 2, 1, True),
    ],
)
def test_supcon_matches_reference_across_tiles(
    cb, denominator, n, m, d, k, self_offset, with_contrasts
):
    _compare_supcon(cb, n, m, d, k, denominator, self_offset, with_contrasts)


def test_supcon_mean_reduction_and_all_one_class(cb):
    # every anchor positive with every other one; no negatives at all for pos_plus_neg
    for denominator in ("all", "pos_plus_neg"):
        _compare_supcon(cb, 140, 140, 6, 1, denominator, None, False, reduction="mean")


@pytest.mark.parametrize("pos_plus_neg", [False, True])
def test_supcon_gradcheck_float64(cb, pos_plus_neg):
    a = _features(6, 4, torch.float64).requires_grad_()
    b = _features(9, 4, torch.float64, seed=2).requires_grad_()
    y, yb = _labels(6, 3), _labels(9, 3, seed=4)

    def f(a, b):
        return torch.ops.hermes.supcon_fwd(a, y, b, yb, 0.5, 0.7, 1, pos_plus_neg)[0]

    assert torch.autograd.gradcheck(f, (a, b))


def test_inter_task_attention_gradcheck_float64(cb):
    args = (
        torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True),
        torch.rand(2, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(1, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(
        lambda *t: torch.ops.hermes.inter_task_attention_fwd(*t)[0], args
    )


def test_inter_task_attention_ties_share_the_max_gradient(cb):
    # all channels equal: torch.amax's backward splits the gradient evenly among them
    x = torch.ones(1, 4, 3, 3, requires_grad=True)
    g = torch.ones(1, 4, requires_grad=True)
    w = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    grads = []
    for backend in ("torch", "cpp"):
        y = inter_task_attention(x, g, w, b, backend=backend)
        grads.append(torch.autograd.grad(y.sum(), [x, g, w, b]))
    for o, r in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


def test_dual_threshold_hook_runs_between_the_passes(cb):
    logits = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(0)) * 3
    seen = []

    def hook(histogram):
        seen.append(histogram.clone())
        return torch.tensor([30, 10])  # as if the other ranks had seen more of class 0

    out = dual_threshold(logits, eta=0.6, histogram_hook=hook, backend="cpp")
    ref = dual_threshold_reference(logits, eta=0.6, histogram_hook=hook)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    assert int(seen[0].sum()) == 60
    torch.testing.assert_close(out.thresholds, class_thresholds(torch.tensor([30, 10]), 0.95, 0.5))
    assert torch.equal(out.reliable, ref.reliable)
    assert torch.equal(out.stats.histogram, seen[0])


# ---------------------------------------------------------------------------------------------
# Threads and memory
# ---------------------------------------------------------------------------------------------


def test_results_do_not_depend_on_the_thread_count(cb):
    a, y = _features(300, 16).requires_grad_(), _labels(300, 4)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, max(2, threads)):
            torch.set_num_threads(t)
            loss = supcon_loss(a, y, backend="cpp")
            results.append((loss.detach(), torch.autograd.grad(loss, a)[0]))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    import torch.nn.functional as F
    from hermes.ops import supcon_loss
    n, d, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    a = F.normalize(torch.randn(n, d), dim=1).requires_grad_()
    y = torch.randint(0, 10, (n,))
    supcon_loss(a[:8], y[:8], backend=backend).backward()  # warm up (allocator, thread pool)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    supcon_loss(a, y, backend=backend).backward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
    """
)


def test_supcon_peak_memory_is_linear_in_n(cb):
    # N = 8192: one N x N fp32 matrix is 256 MiB; the fused backward keeps O((N + M) d) plus one
    # tile and one contrast-gradient partial sum per thread.
    n, d = 8192, 32
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(n), str(d), "cpp"],
        capture_output=True,
        text=True,
        check=True,
    )
    growth_mib = int(out.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.0f} MiB"


def test_automatic_choice_on_cpu_follows_the_measured_rule(cb, monkeypatch):
    for var in ("HERMES_BACKEND", "HERMES_BACKEND_SUPCON_LOSS"):
        monkeypatch.delenv(var, raising=False)

    def chosen(n: int) -> str:
        a, y = _features(n, 4), _labels(n, 3)
        inputs = dict(anchors=a, labels=y, contrasts=None, contrast_labels=None)
        return dispatch.select("supcon_loss", None, a.device, inputs).backend

    small = int(cb.supcon.CPU_MIN_PAIRS**0.5) - 1
    assert chosen(small) == "torch"
    assert chosen(small + 2) == "cpp"
    # forcing still works below the threshold
    assert (
        dispatch.select(
            "supcon_loss",
            "cpp",
            torch.device("cpu"),
            dict(anchors=_features(4, 4), labels=_labels(4, 2)),
        ).backend
        == "cpp"
    )
