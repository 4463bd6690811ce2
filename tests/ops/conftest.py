"""Shared fixtures of the fused-op tests: the fast backends to compare, and tolerances per dtype.

Triton runs on the CPU through its interpreter; ``TRITON_INTERPRET=1`` must be set before any
kernel module is imported, so it is set here (and in ``tests/conftest.py``) when no CUDA device
is present. Every test runs unchanged on a GPU, where the kernels are compiled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hermes.ops import dispatch  # noqa: E402

# Every backend other than the reference, with the device its tests run on. "triton" runs on
# the GPU when there is one, else on the CPU under the interpreter.
FAST_BACKENDS = ("triton", "cpp", "cuda")


def backend_device(backend: str) -> torch.device:
    if backend == "cpp":
        return torch.device("cpu")
    if backend == "cuda" or torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _backend_or_skip(name: str) -> tuple[str, torch.device]:
    if name == "torch":
        return name, torch.device("cpu")
    device = backend_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"backend {name!r} needs a CUDA device")
    status = {row[name] for row in dispatch.available().values()}
    if "registered" not in status:
        pytest.skip(f"backend {name!r} unavailable: {'; '.join(sorted(status))}")
    return name, device


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request) -> tuple[str, torch.device]:
    """(backend name, device to test it on); skipped when the backend is not there at all."""
    return _backend_or_skip(request.param)


@pytest.fixture(params=("torch", *FAST_BACKENDS))
def any_backend(request) -> tuple[str, torch.device]:
    """As :func:`fast_backend`, the reference (``torch``, on the CPU) included."""
    return _backend_or_skip(request.param)


def require(op: str, backend: str, inputs: dict[str, Any]) -> None:
    """Skip the test with the dispatcher's reasons when ``backend`` cannot run ``inputs``."""
    device = next(v.device for v in inputs.values() if isinstance(v, torch.Tensor))
    try:
        dispatch.select(op, backend, device, inputs)
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def require_backend() -> Callable[[str, str, dict[str, Any]], None]:
    return require


# fp32: the kernel against the fp32 reference, relative to the reference's largest magnitude.
FP32_RTOL = {"forward": 1e-5, "grad": 1e-4}
# Half precision (flash-attention's rule): error against the fp32 reference at most twice the
# error of the same-dtype reference, plus this atol relative to the largest magnitude.
HALF_ATOL = {"forward": 1e-4, "grad": 1e-3}


def assert_matches(
    out: torch.Tensor,
    ref32: torch.Tensor,
    ref_same_dtype: torch.Tensor | None,
    dtype: torch.dtype,
    kind: str = "forward",
    name: str = "output",
) -> None:
    """Check ``out`` against the fp32 reference with the tolerance of ``dtype`` (see above).

    NaN must appear exactly where the reference has NaN.
    """
    out, ref32 = out.detach().float().cpu(), ref32.detach().float().cpu()
    assert out.shape == ref32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    nan = torch.isnan(ref32)
    assert torch.equal(torch.isnan(out), nan), f"{name}: NaN pattern differs from the reference"
    out, ref32 = out[~nan], ref32[~nan]
    if out.numel() == 0:
        return
    scale = ref32.abs().max().clamp(min=1e-6)
    err = (out - ref32).abs().max()
    if dtype == torch.float32:
        bound = FP32_RTOL[kind] * scale
    else:
        base = (ref_same_dtype.detach().float().cpu()[~nan] - ref32).abs().max()
        bound = 2 * base + HALF_ATOL[kind] * scale
    assert err <= bound, f"{name} ({dtype}, {kind}): max error {err:.3g} > bound {bound:.3g}"


@pytest.fixture
def check() -> Callable[..., None]:
    return assert_matches


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
