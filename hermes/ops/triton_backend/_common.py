"""What every Triton op shares: whether kernels run interpreted, and the common input checks."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from hermes.kernels import INTERPRET

HALF_AND_FLOAT = (torch.float16, torch.bfloat16, torch.float32)


def device_reasons(*tensors: Tensor | None) -> list[str]:
    """Why Triton cannot run on these tensors' device(s) (empty when it can)."""
    present = [t for t in tensors if t is not None]
    devices = {t.device for t in present}
    if len(devices) > 1:
        return [f"inputs on several devices {sorted(str(d) for d in devices)}"]
    device = present[0].device
    if device.type == "cuda":
        return []
    if device.type == "cpu":
        if INTERPRET:
            return []
        return [
            "CPU tensors need TRITON_INTERPRET=1 set before hermes.kernels is imported "
            "(Triton's interpreter)"
        ]
    return [f"device type {device.type!r} is not supported (cuda, or cpu under TRITON_INTERPRET=1)"]


def dtype_reasons(name: str, t: Tensor, allowed: tuple[torch.dtype, ...]) -> list[str]:
    if t.dtype in allowed:
        return []
    return [
        f"{name} dtype {t.dtype} is not supported (expected one of {', '.join(map(str, allowed))})"
    ]


def launch_device(t: Tensor) -> Any:
    """Launch on ``t``'s device: Triton launches on the *current* CUDA device, which need not be
    the tensors' (``cuda:1`` with ``cuda:0`` current). A no-op on the CPU (interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
