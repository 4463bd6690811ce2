"""What every op of the ``cpp`` / ``cuda`` backends shares: the loaded extension, whether a
dispatch key has a kernel in this build, the compute dtype and the device reasons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import hermes._C  # noqa: F401  (registers torch.ops.hermes.*)

OPS = torch.ops.hermes


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``hermes::<op>`` has a kernel for ``device_type`` ("cpu" or "cuda") in this build."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"hermes::{op}", key)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the CPU kernels compute in: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def device_reasons(op: str, device_type: str, tensor: Tensor) -> list[str]:
    """Why ``hermes::<op>`` cannot run on ``tensor``'s device as ``device_type`` (empty when it can)."""
    if tensor.device.type != device_type:
        return [f"needs {device_type} tensors, got {tensor.device.type}"]
    if not has_kernel(op, device_type):
        return [f"hermes._C was built without {device_type} kernels"]
    return []


def float_input_reasons(
    kernel: str, device_type: str, arg: str, what: str
) -> Callable[..., list[str]]:
    """The dispatcher's ``not_supported_reasons`` for a ``device_type`` kernel whose input
    ``arg`` (described as ``what``) must be floating point on a device the kernel serves."""

    def reasons(**inputs: Any) -> list[str]:
        x = inputs[arg]
        out = device_reasons(kernel, device_type, x)
        if not x.is_floating_point():
            out.append(f"needs {what}, got {x.dtype}")
        return out

    return reasons
