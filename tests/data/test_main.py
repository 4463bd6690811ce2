"""``python -m hermes.data``: inspection report and split file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
