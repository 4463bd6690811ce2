"""``python -m hermes.data``: inspection report and split file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hermes.data import DataConfig, load_records
from hermes.data.__main__ import detect_layout, main
from hermes.data.splits import Split


def test_inspect_busi_layout_and_write_split(busi_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "split.json"
    rc = main([str(busi_dir), "--split-out", str(out), "--labeled", "4"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "images: 12 (6 benign, 4 malignant, 2 normal)" in text
    assert "every mask accounted for" in text and "problems: none" in text
    split = Split.load(out)
    assert len(split.labeled) == 4 and len(split.train) + len(split.test) == 10


def test_inspect_reports_problems(busi_dir: Path, capsys) -> None:
    (busi_dir / "benign" / "benign (1)_mask.png").unlink()
    (busi_dir / "malignant" / "malignant (2).png").write_bytes(b"junk")
    rc = main([str(busi_dir), "--duplicate-distance", "-1"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "problems: 2" in text and "benign (1)" in text and "malignant (2).png" in text


def test_detect_layout(busi_dir: Path, folder_dir: Path, tmp_path: Path) -> None:
    assert detect_layout(busi_dir) == "busi"
    assert detect_layout(folder_dir) == "folder"
    (tmp_path / "u" / "original").mkdir(parents=True)
    (tmp_path / "u" / "GT").mkdir()
    assert detect_layout(tmp_path / "u") == "udiat"


@pytest.mark.skipif(not os.environ.get("HERMES_BUSI_DIR"), reason="HERMES_BUSI_DIR not set")
def test_inspect_real_busi(capsys) -> None:
    rc = main([os.environ["HERMES_BUSI_DIR"]])
    text = capsys.readouterr().out
    assert rc == 0
    assert "images: 391 (219 benign, 105 malignant, 67 normal)" in text
    assert "mask files: 403 (403 attached to images; every mask accounted for)" in text
    assert "near-duplicate groups" in text


# ------------------------------------------------------------------ the command, as users run it
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _break(kind: str, tmp_path: Path, write_busi, write_folder) -> tuple[Path, str, str]:
    """A broken dataset: (root, the trainer's ``data.dataset``, text that both the inspector's
    report and the trainer's error must hold)."""
    if kind in ("truncated_png", "empty_class_folder"):
        root = write_busi(tmp_path / "busi", {"benign": 3, "malignant": 3})
        if kind == "truncated_png":
            path = root / "benign" / "benign (2).png"
            path.write_bytes(path.read_bytes()[:-40])
            return root, "busi", "benign (2).png: image file is truncated"
        for path in (root / "malignant").iterdir():
            path.unlink()
        return root, "busi", "malignant holds no images"
    if kind == "not_a_dataset":
        (tmp_path / "notes" / "drafts").mkdir(parents=True)
        (tmp_path / "notes" / "drafts" / "a.txt").write_text("hello")
        return tmp_path / "notes", "busi", "not a BUSI folder"
    if kind == "missing_folder":
        return tmp_path / "nowhere", "folder", f"folder not found: {tmp_path / 'nowhere'}"
    root = write_folder(tmp_path / "folder", ["benign"] * 3 + ["malignant"] * 3)
    csv_path = root / "labels.csv"
    if kind == "missing_labels":
        csv_path.unlink()
        return root, "folder", "label file not found"
    if kind == "duplicate_id":
        csv_path.write_text(csv_path.read_text() + "000002,malignant\n")
        return root, "folder", "line 8 (000002,malignant): duplicate id '000002', first on line 3"
    csv_path.write_text(csv_path.read_text().replace("000005,malignant", "000005,benigm"))
    return root, "folder", "line 6 (000005,benigm): unknown label 'benigm'"


BROKEN = [
    "truncated_png",
    "empty_class_folder",
    "not_a_dataset",
    "missing_folder",
    "missing_labels",
    "duplicate_id",
    "unknown_label",
]


@pytest.mark.parametrize("kind", BROKEN)
def test_inspector_and_trainer_stop_at_the_same_problem(
    kind: str, tmp_path: Path, make_busi, make_folder
) -> None:
    """``python -m hermes.data`` lists the problem and exits 1, without a traceback; the
    trainer's reader stops at the same problem."""
    root, dataset, expected = _break(kind, tmp_path, make_busi, make_folder)
    result = _run("hermes.data", str(root), "--duplicate-distance", "-1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert expected in result.stdout
    if kind == "not_a_dataset":
        assert "no dataset layout matches" in result.stdout
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_records(DataConfig(dataset=dataset, root=str(root)))
    assert expected in str(err.value)


def test_train_cli_refuses_a_bad_labels_file(tmp_path: Path, make_busi, make_folder) -> None:
    """The run stops before training with the row named, exit status 2 (it used to train)."""
    root, _, expected = _break("unknown_label", tmp_path, make_busi, make_folder)
    result = _run(
        "hermes.train",
        "--dataset",
        "folder",
        "--data",
        str(root),
        "--baseline",
        "none",
        "--set",
        f"out_dir={tmp_path / 'runs'}",
        "--set",
        "optim.steps=1",
        timeout=600,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
