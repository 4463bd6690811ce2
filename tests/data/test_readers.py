"""Readers: BUSI, UDIAT and generic layouts, with broken files named in the errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hermes.data.readers import read_busi, read_dataset, read_folder, read_udiat, scan_busi


def test_busi_layout_and_class_selection(busi_dir: Path) -> None:
    records = read_busi(busi_dir)  # default classes: benign, malignant
    assert len(records) == 10
    assert {r.label for r in records} == {"benign", "malignant"}
    assert all(len(r.masks) == 1 and r.masks[0].name.endswith("_mask.png") for r in records)
    assert len({r.id for r in records}) == 10
    assert len(read_busi(busi_dir, classes=None)) == 12
    assert {r.label for r in read_busi(busi_dir, ("normal", "benign"))} == {"normal", "benign"}


def test_busi_extra_masks_are_collected(busi_dir: Path) -> None:
    extra = np.zeros((32, 32), np.uint8)
    extra[:3, :3] = 255
    Image.fromarray(extra).save(busi_dir / "benign" / "benign (2)_mask_1.png")
    Image.fromarray(extra).save(busi_dir / "benign" / "benign (2)_mask_2.png")
    rec = next(r for r in read_busi(busi_dir) if r.id == "benign/benign (2)")
    assert [m.name for m in rec.masks] == [
        "benign (2)_mask.png",
        "benign (2)_mask_1.png",
        "benign (2)_mask_2.png",
    ]


def test_busi_missing_mask_names_the_image(busi_dir: Path) -> None:
    (busi_dir / "malignant" / "malignant (3)_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"malignant \(3\)"):
        read_busi(busi_dir)


def test_busi_size_mismatch_names_the_mask(busi_dir: Path) -> None:
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(busi_dir / "benign" / "benign (4)_mask.png")
    with pytest.raises(ValueError, match=r"benign \(4\)_mask.png.*32x30"):
        read_busi(busi_dir)


def test_busi_corrupt_image_names_the_file(busi_dir: Path) -> None:
    (busi_dir / "benign" / "benign (5).png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(ValueError, match=r"benign \(5\).png"):
        read_busi(busi_dir)


def test_busi_scan_collects_every_problem(busi_dir: Path) -> None:
    (busi_dir / "benign" / "benign (1)_mask.png").unlink()
    (busi_dir / "benign" / "benign (2).png").write_bytes(b"junk")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(busi_dir / "benign" / "ghost_mask.png")
    scan = scan_busi(busi_dir)
    assert len(scan.records) == 10  # 12 images, two broken
    assert len(scan.problems) == 2  # a mask without an image is harmless, listed apart
    assert [p.name for p in scan.orphan_masks] == ["ghost_mask.png"]


def test_folder_layout(folder_dir: Path) -> None:
    records = read_folder(folder_dir)
    assert [r.label for r in records].count("malignant") == 5
    assert records[0].id == "000001" and records[0].masks[0].parent.name == "masks"


def test_folder_missing_mask_and_label(folder_dir: Path, make_folder) -> None:
    (folder_dir / "masks" / "000003.png").unlink()
    with pytest.raises(FileNotFoundError, match="000003.png"):
        read_folder(folder_dir)
    make_folder(folder_dir, ["benign"] * 10)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder_dir / "images" / "extra.png")
    with pytest.raises(ValueError, match="no label for image .*extra.png"):
        read_folder(folder_dir)


def test_busi_truncated_png_names_the_file(busi_dir: Path) -> None:
    """The header is intact, the pixel data is not: found by decoding, not by the header."""
    path = busi_dir / "malignant" / "malignant (2).png"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"malignant \(2\).png: image file is truncated"):
        read_busi(busi_dir)


def test_busi_empty_class_folder_names_the_folder(busi_dir: Path) -> None:
    for path in (busi_dir / "malignant").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="malignant holds no images"):
        read_busi(busi_dir)


def test_folder_labels_duplicate_id_names_both_rows(folder_dir: Path) -> None:
    csv_path = folder_dir / "labels.csv"
    csv_path.write_text(csv_path.read_text() + "000003,malignant\n")
    with pytest.raises(
        ValueError, match=r"line 12 \(000003,malignant\): duplicate id '000003', first on line 4"
    ):
        read_folder(folder_dir)


def test_folder_labels_unknown_label_names_the_row(folder_dir: Path) -> None:
    csv_path = folder_dir / "labels.csv"
    csv_path.write_text(csv_path.read_text().replace("000007,malignant", "000007,benigm"))
    with pytest.raises(ValueError, match=r"line 8 \(000007,benigm\): unknown label 'benigm'"):
        read_folder(folder_dir)
    assert len(read_folder(folder_dir, classes=("benign", "malignant", "benigm"))) == 10


def test_udiat_numeric_ids_without_zeros_are_duplicates(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "u", ["benign", "malignant"], images="original", masks="GT")
    (root / "labels.csv").write_text("id,label\n000001,benign\n000002,malignant\n2,benign\n")
    with pytest.raises(ValueError, match=r"line 4 \(2,benign\): duplicate id '2', first on line 3"):
        read_udiat(root)


def test_folder_bad_csv_header(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "d", ["benign", "malignant"], header="foo,bar")
    with pytest.raises(ValueError, match="labels.csv"):
        read_folder(root)


def test_udiat_layout_with_its_own_sheet_columns(tmp_path: Path, make_folder) -> None:
    root = make_folder(
        tmp_path / "DatasetB",
        ["Benign", "Malignant", "Benign", "Malignant"],
        images="original",
        masks="GT",
        csv_name="DatasetB.csv",
        header="Image,Type",
        ids=["000001", "000002", "000003", "000004"],
    )
    # the label sheet may drop leading zeros
    text = (root / "DatasetB.csv").read_text().replace("000004", "4")
    (root / "DatasetB.csv").write_text(text)
    records = read_udiat(root)
    assert [(r.id, r.label) for r in records] == [
        ("000001", "benign"),
        ("000002", "malignant"),
        ("000003", "benign"),
        ("000004", "malignant"),
    ]
    assert read_dataset("udiat", root)[0].masks[0].parent.name == "GT"


def test_read_dataset_rejects_absent_class(tmp_path: Path, make_busi) -> None:
    root = make_busi(tmp_path / "b", {"benign": 2, "malignant": 2})
    with pytest.raises(FileNotFoundError, match="normal"):
        read_dataset("busi", root, ("benign", "normal"))
    with pytest.raises(ValueError, match="unknown dataset layout"):
        read_dataset("nope", root)


@pytest.mark.skipif(not os.environ.get("HERMES_BUSI_DIR"), reason="HERMES_BUSI_DIR not set")
def test_real_busi_counts_and_masks() -> None:
    from hermes.data.io import load_image, load_masks

    root = Path(os.environ["HERMES_BUSI_DIR"])
    scan = scan_busi(root)
    assert scan.problems == [] and scan.orphan_masks == []
    counts = {c: sum(r.label == c for r in scan.records) for c in ("benign", "malignant", "normal")}
    assert counts == {"benign": 219, "malignant": 105, "normal": 67}
    assert sum(counts.values()) == 391
    assert sum(len(r.masks) for r in scan.records) == 403
    for rec in scan.records:  # every image and mask decodes; lesions have a non-empty mask
        image, mask = load_image(rec.image), load_masks(rec.masks, rec.image)
        assert image.shape[1:] == mask.shape, rec.image
        if rec.label != "normal":
            assert int(mask.sum()) > 0, rec.image
