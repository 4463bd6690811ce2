"""``make gpu-check`` (``benchmarks/gpu_check.py``) without a GPU: it says so, skips every step
and still writes its summary, with exit status 0 (CUDA is hidden from the subprocess, so this
runs the same on a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gpu-check: skipped, no CUDA device" in proc.stdout
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["status"] == "skipped: no CUDA device"
    assert set(summary["steps"]) == {"device", "extension", "tests", "benchmarks"}
    for step in summary["steps"].values():
        assert step["status"] == "skipped" and "no CUDA device" in step["reason"]
    assert summary["benchmarks"] == []
    text = (out / "gpu_check.md").read_text()
    assert "status: **skipped: no CUDA device**" in text and "| tests | skipped |" in text
