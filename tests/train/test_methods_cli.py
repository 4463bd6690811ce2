"""The baselines from the command line and from the experiment runner, end to end on a tiny
phantom (real commands, a few steps each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hermes.experiments.__main__ import main as experiments_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method", ["mean_teacher", "fixmatch"])
def test_train_cli_runs_a_baseline_against_supervised(
    method: str, tiny_overrides: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "hermes.train", "--method", method]
    for item in [*tiny_overrides, "optim.steps=2", "eval.every=0", "threads=1"]:
        args += ["--set", item]
    args += ["--out", str(out)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (method, "supervised"):
        metrics = json.loads((out / name / "report" / "metrics.json").read_text())
        assert metrics["mode"] == name and metrics["steps"] == 2
    assert (out / "report" / "summary.md").is_file()  # the comparison
    history = json.loads((out / method / "report" / "metrics.json").read_text())
    assert history["final"]["dice_lesion"] >= 0.0


def test_experiment_runner_trains_the_baselines(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "exp"
    argv = [
        "--dataset",
        "phantom",
        "--config",
        "hermes/configs/experiments/phantom_cpu.yaml",
        "--budgets",
        "8",
        "--seeds",
        "0",
        "--variants",
        "mean_teacher",
        "fixmatch",
        "--out",
        str(out),
    ]
    for item in [*tiny_overrides, "optim.steps=2", "eval.every=0", "threads=1"]:
        if not item.startswith(("out_dir=", "data.labeled=")):  # the runner sets these
            argv += ["--set", item]
    assert experiments_main(argv) == 0
    for variant in ("mean_teacher", "fixmatch"):
        result = json.loads((out / "runs/labeled8/seed0" / variant / "result.json").read_text())
        assert result["config"]["method"]["mode"] == variant and result["steps"] == 2
    table = (out / "results.md").read_text()
    assert "Mean Teacher" in table and "FixMatch" in table
