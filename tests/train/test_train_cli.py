"""``python -m hermes.train`` in a subprocess: refusing to overwrite a run, start-up checks,
Ctrl-C (SIGINT) and resuming to a bit-identical result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, "-m", "hermes.train"]


def _env(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _train(args: list[str], **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRAIN, *args], cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=600
    )


def test_a_folder_holding_a_run_is_not_overwritten(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    old = root / "supervised" / "last.pt"  # the baseline's folder holds a run
    old.parent.mkdir(parents=True)
    old.write_bytes(b"a finished run")
    proc = _train(["--out", str(root), *_sets(tiny_overrides)])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "already holds a run" in proc.stderr and str(root / "supervised") in proc.stderr
    for offer in (f"--resume {old}", "--out", "--overwrite"):
        assert offer in proc.stderr
    assert old.read_bytes() == b"a finished run"
    assert not (root / "hermes" / "last.pt").exists()  # refused before the first run started


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (["--set", "data.image_size=50"], {}, "data.image_size"),
        (["--set", "eval.best_metric=nonsense"], {}, "eval.best_metric"),
        (["--backend", "cuda"], {}, "backend: 'cuda'"),
        (["--backend", "triton"], {"TRITON_INTERPRET": None}, "backend: 'triton'"),
    ],
)
def test_bad_settings_fail_at_start_up(
    tiny_overrides: list[str], tmp_path: Path, args: list[str], env: dict, field: str
) -> None:
    if torch.cuda.is_available() and "--backend" in args:
        pytest.skip("the backend runs on this machine")
    proc = _train(["--baseline", "none", *_sets(tiny_overrides), *args], **env)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {field}" in proc.stderr and "Traceback" not in proc.stderr
    assert "data phantom:" not in proc.stderr  # before the data is built
    assert not (tmp_path / "run" / "hermes" / "config.yaml").exists()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, tiny_settings: list[str]) -> dict:
    """The same tiny run twice: straight through, and stopped by SIGINT then resumed."""
    root = tmp_path_factory.mktemp("sigint")
    sets = _sets([*tiny_settings, "optim.steps=10", "eval.every=2"])
    common = ["--baseline", "none", "--backend", "torch", *sets]
    straight = _train(["--out", str(root / "straight"), *common])
    assert straight.returncode == 0, straight.stderr

    proc = subprocess.Popen(
        [*TRAIN, "--out", str(root / "cut"), *common],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stderr:  # wait until training is under way (the evaluation at step 2)
        seen.append(line)
        if "step 2:" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=600)
    stopped = {"returncode": proc.returncode, "stderr": "".join(seen) + err, "stdout": out}
    stopped["step"] = torch.load(root / "cut" / "hermes" / "last.pt", weights_only=True)["step"]

    checkpoint = root / "cut" / "hermes" / "last.pt"
    resumed = _train(["--resume", str(checkpoint), "--set", f"out_dir={root / 'cut'}"])
    assert resumed.returncode == 0, resumed.stderr
    return {"root": root, "stopped": stopped, "resumed": resumed, "checkpoint": checkpoint}


def test_ctrl_c_saves_a_checkpoint_and_exits_130(interrupted: dict) -> None:
    stopped = interrupted["stopped"]
    assert stopped["returncode"] == 130, stopped["stderr"]
    assert "Traceback" not in stopped["stderr"] and "KeyboardInterrupt" not in stopped["stderr"]
    assert 2 <= stopped["step"] < 10  # saved where it stopped, not at the last periodic save
    resume = f"resume with: python -m hermes.train --resume {interrupted['checkpoint']}"
    assert resume in stopped["stderr"]


def test_resume_with_the_same_out_dir_continues_in_the_run_folder(interrupted: dict) -> None:
    cut = interrupted["root"] / "cut"
    assert sorted(p.name for p in cut.iterdir()) == ["hermes"]  # not split over two folders
    assert (cut / "hermes" / "report" / "summary.md").is_file()
    assert interrupted["resumed"].stderr.count("report written") == 1


def test_interrupted_and_resumed_run_is_bit_identical(interrupted: dict) -> None:
    root = interrupted["root"]
    a = torch.load(root / "straight" / "hermes" / "last.pt", weights_only=True)
    b = torch.load(root / "cut" / "hermes" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    assert a["method"].keys() == b["method"].keys()
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    # every logged value, step by step (repr tells every float apart, and NaN equals NaN)
    assert json.dumps(a["history"]) == json.dumps(b["history"])
    final = [
        json.loads((root / r / "hermes" / "report" / "metrics.json").read_text())["final"]
        for r in ("straight", "cut")
    ]
    assert final[0] == final[1]
