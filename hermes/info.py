"""``python -m hermes.info``: versions, devices, and which backend can run each fused op."""

from __future__ import annotations

import logging
import platform

import torch


def report() -> str:
    from hermes import __version__
    from hermes.ops import dispatch

    lines = [
        f"hermes {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}",
        f"cuda available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""),
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError as exc:
        lines.append(f"triton: not importable ({exc})")
    lines.append("")
    lines.append("op                    " + "".join(f"{b:<12}" for b in dispatch.BACKENDS))
    for op, row in dispatch.available().items():
        lines.append(f"{op:<22}" + "".join(f"{('ok' if v == 'registered' else 'no'):<12}" for v in row.values()))
    reasons = {b: why for row in dispatch.available().values() for b, why in row.items() if why != "registered"}
    if reasons:
        lines.append("")
        for b, why in reasons.items():
            lines.append(f"{b}: {why}")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    print(report())


if __name__ == "__main__":
    main()
