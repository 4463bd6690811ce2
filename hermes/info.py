"""``python -m hermes.info``: versions, devices, and whether each backend can run each fused op.

A backend is *usable* for an op when the dispatcher would accept a small fp32 input of that op
on the device the backend runs on (``cpp``: the CPU; ``cuda``: a CUDA device; ``triton``: a
CUDA device, or the CPU under Triton's interpreter, ``TRITON_INTERPRET=1``; ``torch``: any).
Every unusable pair is listed with the reasons the backend itself gives.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

import torch

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"


def _example(op: str, device: torch.device) -> dict[str, Any]:
    """A small fp32 input of ``op`` on ``device``, in the dispatcher's keyword form."""
    zeros = dict(device=device)
    if op == "supcon_loss":
        return dict(
            anchors=torch.zeros(4, 8, **zeros),
            labels=torch.zeros(4, dtype=torch.long, **zeros),
            contrasts=None,
            contrast_labels=None,
            temperature=0.07,
            base_temperature=0.07,
            weights=None,
            denominator="all",
            reduction="mean",
            self_offset=None,
        )
    if op == "dual_threshold":
        return dict(
            logits=torch.zeros(2, 2, **zeros),
            eta=0.5,
            tau_max=0.95,
            tau_min=0.5,
            valid=None,
            histogram_hook=None,
        )
    return dict(
        cls_feature=torch.zeros(1, 4, 4, 4, **zeros),
        gate=torch.zeros(1, 4, **zeros),
        spatial_weight=torch.zeros(1, 2, 3, 3, **zeros),
        spatial_bias=torch.zeros(1, **zeros),
    )


def backend_status(op: str, backend: str) -> tuple[bool, str]:
    """``(usable, why)`` for ``backend`` running ``op`` on this machine (see the module docstring).

    ``why`` says where a usable backend runs, or every reason an unusable one gives.
    """
    from hermes.ops import dispatch

    cuda = torch.cuda.is_available()
    if backend == "cuda" and not cuda:
        return False, NO_CUDA
    device = torch.device("cuda" if cuda and backend != "cpp" else "cpu")
    reasons = dispatch.not_supported_reasons(op, backend, _example(op, device))
    if reasons:
        if backend == "triton" and not cuda:
            reasons.insert(0, NO_CUDA)
        return False, "; ".join(reasons)
    if backend == "torch":
        return True, "the reference, on any device"
    if backend == "triton" and device.type == "cpu":
        return True, "on the CPU through Triton's interpreter (TRITON_INTERPRET=1; slow, for tests)"
    return True, f"on {device.type}"


def report() -> str:
    """The text ``python -m hermes.info`` prints: versions, a table of ops x backends (ok/no),
    then one line per op and backend saying why."""
    from hermes import __version__
    from hermes.ops import dispatch

    cuda = torch.cuda.is_available()
    lines = [
        f"hermes {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}",
        f"cuda available: {cuda}" + (f" ({torch.cuda.get_device_name()})" if cuda else ""),
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError as exc:
        lines.append(f"triton: not importable ({exc})")
    status = {op: {b: backend_status(op, b) for b in dispatch.BACKENDS} for op in dispatch.OPS}
    lines += ["", "op                    " + "".join(f"{b:<12}" for b in dispatch.BACKENDS)]
    for op, row in status.items():
        lines.append(f"{op:<22}" + "".join(f"{'ok' if ok else 'no':<12}" for ok, _ in row.values()))
    lines.append("")
    for op, row in status.items():
        for backend, (ok, why) in row.items():
            lines.append(f"{op} / {backend}: {'usable' if ok else 'not usable'} - {why}")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    print(report())


if __name__ == "__main__":
    main()
