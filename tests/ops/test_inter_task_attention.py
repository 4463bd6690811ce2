"""``inter_task_attention``: every fast backend against the reference, output and four gradients."""

from __future__ import annotations

import pytest
import torch

from hermes.ops import InterTaskAttention, inter_task_attention, inter_task_attention_reference

# (B, C, H, W, k): 1, primes, more channels than one channel chunk (16), more pixels than one
# pixel block (256), kernel sizes 1, 3 and 5.
SHAPES = [
    (1, 1, 1, 1, 3),
    (2, 5, 7, 9, 3),
    (2, 37, 5, 3, 3),
    (1, 3, 17, 19, 1),
    (2, 3, 4, 6, 5),
]
NAMES = ("cls_feature", "gate", "spatial_weight", "spatial_bias")


def _inputs(shape, seed=0, ties=False):
    b, c, h, w, k = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    if ties:  # few distinct values: the channel max is attained by several channels
        x = torch.randint(-2, 3, (b, c, h, w), generator=g).float()
    gate = torch.ones(b, c) if ties else torch.rand(b, c, generator=g)
    weight = torch.randn(1, 2, k, k, generator=g) * 0.5
    bias = torch.randn(1, generator=g)
    grad = torch.randn(b, c, h, w, generator=g)
    return (x, gate, weight, bias), grad


def _run(fn, inputs, grad, dtype, device):
    leaves = [
        t.to(device, dtype if i < 2 else torch.float32).requires_grad_()
        for i, t in enumerate(inputs)
    ]
    y = fn(*leaves)
    grads = torch.autograd.grad((y.float() * grad.to(device)).sum(), leaves)
    return y, grads


def _compare(fast_backend, require_backend, check, shape, dtype, **kw):
    name, device = fast_backend
    inputs, grad = _inputs(shape, **kw)
    on_device = [t.to(device, dtype if i < 2 else torch.float32) for i, t in enumerate(inputs)]
    require_backend("inter_task_attention", name, dict(zip(NAMES, on_device, strict=True)))
    y, grads = _run(lambda *t: inter_task_attention(*t, backend=name), inputs, grad, dtype, device)
    y_ref, g_ref = _run(inter_task_attention_reference, inputs, grad, torch.float32, "cpu")
    y_dt, g_dt = (
        (y_ref, g_ref)
        if dtype == torch.float32
        else _run(inter_task_attention_reference, inputs, grad, dtype, "cpu")
    )
    assert y.dtype == dtype and y.shape == inputs[0].shape
    check(y, y_ref, y_dt, dtype, "forward", "y")
    for got, want, want_dt, what in zip(grads, g_ref, g_dt, NAMES, strict=True):
        check(got, want, want_dt, dtype, "grad", f"grad {what}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_C{}_{}x{}_k{}".format(*s))
def test_matches_reference_fp32(fast_backend, require_backend, check, shape):
    _compare(fast_backend, require_backend, check, shape, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2]], ids=["small", "many_channels"])
def test_matches_reference_half(fast_backend, require_backend, check, shape, dtype):
    _compare(fast_backend, require_backend, check, shape, dtype)


def test_ties_at_the_channel_max(fast_backend, require_backend, check):
    """Where several channels attain the max, its gradient is shared evenly (as torch.amax)."""
    _compare(fast_backend, require_backend, check, (2, 6, 5, 4, 3), torch.float32, ties=True)


def test_module_matches_torch_backend(fast_backend, require_backend, check):
    """``InterTaskAttention`` gives the same output and parameter gradients on either backend."""
    name, device = fast_backend
    torch.manual_seed(0)
    module = InterTaskAttention(channels=6, reduction=2)
    c, s = torch.randn(2, 6, 5, 7), torch.randn(2, 6, 5, 7)
    require_backend(
        "inter_task_attention",
        name,
        dict(
            cls_feature=c.to(device),
            gate=torch.rand(2, 6, device=device),
            spatial_weight=module.spatial.weight.to(device),
            spatial_bias=module.spatial.bias.to(device),
        ),
    )
    results = {}
    for backend, dev in ((name, device), ("torch", torch.device("cpu"))):
        m = module.to(dev)
        m.backend = backend
        m.zero_grad()
        y = m(c.to(dev), s.to(dev))
        y.square().sum().backward()
        results[backend] = (y.detach().cpu(), {k: p.grad.cpu() for k, p in m.named_parameters()})
    check(results[name][0], results["torch"][0], None, torch.float32, "forward", "module output")
    for k, want in results["torch"][1].items():
        check(results[name][1][k], want, None, torch.float32, "grad", f"grad {k}")


def test_triton_custom_ops_trace_under_compile(require_backend):
    """opcheck on the forward op (autograd included), and the public op under
    ``torch.compile(fullgraph=True)`` with its backward: same values as eager."""
    from hermes.ops import dispatch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inputs, grad = _inputs((1, 3, 4, 5, 3), seed=5)
    inputs = [t.to(device).requires_grad_() for t in inputs]
    require_backend("inter_task_attention", "triton", dict(zip(NAMES, inputs, strict=True)))
    dispatch.load_backends()
    torch.library.opcheck(torch.ops.hermes.triton_inter_task_attention_fwd.default, tuple(inputs))

    def run(*t):
        return inter_task_attention(*t, backend="triton")

    compiled = torch.compile(
        run, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager"
    )
    y = compiled(*inputs)
    grads = torch.autograd.grad((y * grad.to(device)).sum(), inputs)
    y_eager = run(*inputs)
    grads_eager = torch.autograd.grad((y_eager * grad.to(device)).sum(), inputs)
    torch.testing.assert_close(y, y_eager)
    for got, want in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(got, want)


# (B, C, H, W, k) with one of B, C, H, W zero.
EMPTY_SHAPES = [(0, 3, 4, 4, 3), (2, 0, 4, 4, 3), (2, 3, 0, 4, 3), (2, 3, 4, 0, 1)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=lambda s: "B{}_C{}_{}x{}_k{}".format(*s))
def test_empty_inputs(any_backend, require_backend, check, shape):
    """An empty feature map gives an empty output and zero gradients, in every backend."""
    name, device = any_backend
    inputs, grad = _inputs(shape)
    on_device = [t.to(device) for t in inputs]
    require_backend("inter_task_attention", name, dict(zip(NAMES, on_device, strict=True)))
    y, grads = _run(
        lambda *t: inter_task_attention(*t, backend=name), inputs, grad, torch.float32, device
    )
    assert y.shape == inputs[0].shape
    for got, want, what in zip(grads, inputs, NAMES, strict=True):
        assert got.shape == want.shape and not got.any(), what


@pytest.mark.parametrize("backend", [None, "torch", "cpp"])
@pytest.mark.parametrize("which", NAMES)
def test_integer_input_is_the_ops_dtype_error(backend, which):
    """Not floating point: the op's own ValueError naming the input, whatever the backend."""
    inputs, _ = _inputs((1, 3, 4, 4, 3))
    named = dict(zip(NAMES, inputs, strict=True))
    named[which] = named[which].round().long()
    with pytest.raises(ValueError, match=f"inter_task_attention: {which} must be floating point"):
        inter_task_attention(**named, backend=backend)


def test_cpp_custom_op_fake_and_dtype_checks(require_backend):
    """The ``hermes._C`` forward op on the CPU: opcheck (fake shapes and dtypes of the saved
    pooled maps and attention, autograd), and its dtype checks name the input: the gate must
    have the feature's dtype, the conv weight the feature's dtype or its op-math type."""
    inputs, _ = _inputs((2, 3, 4, 5, 3), seed=6)
    require_backend("inter_task_attention", "cpp", dict(zip(NAMES, inputs, strict=True)))
    op = torch.ops.hermes.inter_task_attention_fwd.default
    torch.library.opcheck(op, tuple(t.clone().requires_grad_() for t in inputs))
    x, gate, weight, bias = inputs
    with pytest.raises(RuntimeError, match="gate must have x's dtype Float, got Double"):
        op(x, gate.double(), weight, bias)
    with pytest.raises(RuntimeError, match="weight must have x's dtype Float, got Double"):
        op(x, gate, weight.double(), bias)
