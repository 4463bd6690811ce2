"""Start-up checks: a folder that holds a run, and a backend that cannot run here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hermes.train.preflight import check_backend, check_out_dir


def _run_folder(path: Path) -> Path:
    for name in ("last.pt", "best.pt", "config.yaml"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(name)
    (path / "report").mkdir()
    (path / "report" / "summary.md").write_text("old")
    return path


def test_a_folder_holding_a_run_is_refused(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a run") as err:
        check_out_dir(run)
    for offer in ("--resume", str(run / "last.pt"), "--out", "--overwrite"):
        assert offer in str(err.value)
    check_out_dir(tmp_path / "empty")  # nothing there: fine
    check_out_dir(run, resume=run / "last.pt")  # continuing the folder's own run: fine
    other = _run_folder(tmp_path / "other")
    with pytest.raises(ValueError, match="already holds a run"):
        check_out_dir(run, resume=other / "last.pt")  # another run's checkpoint
    assert (run / "last.pt").read_text() == "last.pt"


def test_a_distributed_run_is_resumed_from_its_newest_ray_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for name in ("checkpoint_2026-01-01_10-00-00.000001", "checkpoint_2026-01-01_11-00-00.000001"):
        (run / "ray" / "hermes" / name).mkdir(parents=True)
    for name in ("best.pt", "model.pt"):
        (run / name).write_text(name)
    with pytest.raises(ValueError, match="already holds a run") as err:
        check_out_dir(run)
    newest = run / "ray" / "hermes" / "checkpoint_2026-01-01_11-00-00.000001"
    assert f"--resume {newest}," in str(err.value)


def test_overwrite_removes_the_old_run(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    check_out_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only the run's own files go


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_backend_that_cannot_run_is_named() -> None:
    check_backend("torch", torch.device("cpu"))
    check_backend("cpp", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"backend: 'cuda' cannot run on cpu.*cuda tensors"):
        check_backend("cuda", torch.device("cpu"))
