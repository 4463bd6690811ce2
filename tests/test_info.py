"""``python -m hermes.info``, run as a user runs it: usable or not, per op and backend, and why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hermes.ops import dispatch

ROOT = Path(__file__).resolve().parents[1]


def _info(**env: str) -> str:
    """The output of ``python -m hermes.info`` with no CUDA device visible and ``env`` set."""
    clean = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "hermes.info"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, "CUDA_VISIBLE_DEVICES": "", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _verdicts(text: str) -> dict[tuple[str, str], str]:
    """``{(op, backend): "usable - why" or "not usable - why"}`` from the report's lines."""
    out = {}
    for line in text.splitlines():
        head, sep, rest = line.partition(": ")
        if sep and " / " in head:
            op, backend = head.split(" / ")
            out[op, backend] = rest
    return out


def test_without_cuda_triton_and_cuda_are_not_usable_and_say_why() -> None:
    text = _info()
    assert "cuda available: False" in text
    verdicts = _verdicts(text)
    assert set(verdicts) == {(op, b) for op in dispatch.OPS for b in dispatch.BACKENDS}
    for op in dispatch.OPS:
        assert verdicts[op, "torch"].startswith("usable")
        for backend in ("triton", "cuda"):
            verdict = verdicts[op, backend]
            assert verdict.startswith("not usable"), (op, backend, verdict)
            assert "torch.cuda.is_available() is False" in verdict
        assert "TRITON_INTERPRET=1" in verdicts[op, "triton"]
        cpp = verdicts[op, "cpp"]
        assert cpp.startswith("usable") or "hermes._C" in cpp, cpp
        row = next(line for line in text.splitlines() if line.startswith(op + " "))
        assert row.split()[1:] == [
            "ok" if verdicts[op, b].startswith("usable") else "no" for b in dispatch.BACKENDS
        ]


def test_triton_interpreter_is_usable_on_the_cpu() -> None:
    verdicts = _verdicts(_info(TRITON_INTERPRET="1"))
    for op in dispatch.OPS:
        assert verdicts[op, "triton"].startswith("usable"), verdicts[op, "triton"]
        assert "interpreter" in verdicts[op, "triton"]
