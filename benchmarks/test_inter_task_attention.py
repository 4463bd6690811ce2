"""``inter_task_attention`` (the IAS block after its convolutions): every backend against the
PyTorch reference, forward and forward + backward, at the four depths where the method uses it.

The derived figure is GB/s over the feature-map traffic that any implementation must move:
forward reads the feature and writes the output (2 maps); backward reads the feature and the
output gradient and writes the feature gradient (3 maps); the (B, C) gate and the 3x3 spatial
weights are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import harness
import pytest
import torch

from hermes.ops import inter_task_attention, inter_task_attention_reference

OP = "inter_task_attention"
MAPS_MOVED = {"fwd": 2, "fwd+bwd": 5}


@dataclass(frozen=True)
class Shape:
    """Classification feature ``(b, c, hw, hw)``."""

    b: int
    c: int
    hw: int

    @property
    def id(self) -> str:
        return f"{self.b}x{self.c}x{self.hw}x{self.hw}"


def _depths(b: int, image: int) -> list[Shape]:
    # after the stem conv (64 ch, 1/2), layer1 (64, 1/4), layer2 (128, 1/8), layer3 (256, 1/16)
    return [
        Shape(b, 64, image // 2),
        Shape(b, 64, image // 4),
        Shape(b, 128, image // 8),
        Shape(b, 256, image // 16),
    ]


def shapes(device_type: str, large: bool) -> list[Shape]:
    """The four IAS depths: at 224 px and batch 16 on a GPU (the GPU target), at 224 px
    and batch 8 (a labeled batch) on the CPU; ``--hermes-large`` adds batch 16 on the CPU."""
    if device_type == "cuda":
        return _depths(16, 224) + (_depths(64, 224) if large else [])
    return _depths(8, 224) + (_depths(16, 224) if large else [])


def dtypes(device_type: str) -> list[torch.dtype]:
    return [torch.float32, torch.bfloat16] if device_type == "cuda" else [torch.float32]


@pytest.mark.parametrize("backend", harness.backends(OP))
@pytest.mark.parametrize("mode", harness.MODES)
def test_inter_task_attention(
    benchmark: Any, backend: str, mode: str, shape: Shape, dtype: torch.dtype
) -> None:
    dev = harness.device()
    grad = mode == "fwd+bwd"
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(shape.b, shape.c, shape.hw, shape.hw, generator=g).to(dev, dtype)
    gate = torch.sigmoid(torch.randn(shape.b, shape.c, generator=g)).to(dev, dtype)
    weight = (0.3 * torch.randn(1, 2, 3, 3, generator=g)).to(dev, dtype)
    bias = torch.zeros(1).to(dev, dtype)
    leaves = [t.requires_grad_(grad) for t in (feature, gate, weight, bias)]
    grad_out = torch.randn(feature.shape, generator=g).to(dev, dtype)

    if backend == harness.COMPILE:
        op = harness.compiled(inter_task_attention_reference)
    else:
        inputs = dict(cls_feature=feature, gate=gate, spatial_weight=weight, spatial_bias=bias)
        reason = harness.skip_reason(OP, backend, inputs, dev)
        if reason is not None:
            pytest.skip(reason)

        def op(*args: torch.Tensor) -> torch.Tensor:
            return inter_task_attention(*args, backend=backend)

    if mode == "fwd":

        def call() -> torch.Tensor:
            with torch.no_grad():
                return op(feature, gate, weight, bias)
    else:

        def call() -> torch.Tensor:
            for t in leaves:
                t.grad = None
            out = op(feature, gate, weight, bias)
            out.backward(grad_out)
            return out

    bytes_moved = MAPS_MOVED[mode] * feature.numel() * feature.element_size()
    harness.run_case(
        benchmark,
        call,
        group=f"ias {shape.id} {harness.dtype_name(dtype)} {mode}",
        dev=dev,
        extra=dict(
            op=OP, backend=backend, mode=mode, shape=shape.id, dtype=harness.dtype_name(dtype)
        ),
        work=dict(bytes=float(bytes_moved)),
    )
