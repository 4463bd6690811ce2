"""build_data: the contract the trainer codes against (names, shapes, dtypes, splits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hermes.data import DataConfig, Split, build_data, load_image
from hermes.data.build import resolve_workers


@pytest.fixture
def phantom_cfg(tmp_path: Path) -> DataConfig:
    return DataConfig(
        phantom_size=24,
        phantom_image_size=48,
        image_size=40,
        labeled=4,
        batch_size=8,
        unlabeled_batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        split_file=str(tmp_path / "split.json"),
    )


def test_phantom_loaders_follow_the_contract(phantom_cfg: DataConfig) -> None:
    data = build_data(phantom_cfg)
    assert data.classes == ("benign", "malignant") and data.num_classes == 2
    assert len(data.split.labeled) == 4
    # the labeled budget (4) is below the batch size (8): still full batches
    batch = next(iter(data.labeled))
    assert batch["image"].shape == (8, 3, 40, 40) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (8, 40, 40) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.int64
    assert len(batch["id"]) == 8 and set(batch["id"]) <= set(data.split.labeled)
    assert float(batch["image"].min()) < -1.0  # ImageNet-normalised, not [0, 1]

    ubatch = next(iter(data.unlabeled))
    assert set(ubatch) == {"weak", "strong", "mask", "label", "id"}
    assert ubatch["weak"].shape == ubatch["strong"].shape == (4, 3, 40, 40)
    assert ubatch["mask"].shape == (4, 40, 40) and ubatch["label"].shape == (4,)
    assert set(ubatch["id"]) <= set(data.split.unlabeled)

    first = [b["image"] for b in data.test]
    second = [b["image"] for b in data.test]
    assert sum(x.shape[0] for x in first) == len(data.split.test)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # no augmentation


def test_split_file_written_then_reused(phantom_cfg: DataConfig) -> None:
    data = build_data(phantom_cfg)
    assert Path(phantom_cfg.split_file).is_file()
    saved = Split.load(phantom_cfg.split_file)
    assert set(saved.labeled) == set(data.split.labeled)
    phantom_cfg.seed = 0
    phantom_cfg.labeled = 6  # ignored: the split file wins
    again = build_data(phantom_cfg)
    assert set(again.split.labeled) == set(data.split.labeled)


def test_folder_dataset_with_fraction_budget(folder_dir: Path) -> None:
    cfg = DataConfig(
        dataset="folder",
        root=str(folder_dir),
        labeled=0.5,
        image_size=24,
        batch_size=2,
        unlabeled_batch_size=2,
        duplicate_distance=-1,
    )
    data = build_data(cfg)
    assert len(data.split.train) == 6 and len(data.split.labeled) == 3
    assert next(iter(data.labeled))["image"].shape == (2, 3, 24, 24)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="dataset"):
        DataConfig(dataset="mnist")
    with pytest.raises(ValueError, match="root"):
        DataConfig(dataset="busi")
    with pytest.raises(ValueError, match="phantom has classes"):
        build_data(DataConfig(classes=("benign", "normal")))


def test_load_image_for_prediction(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "p", ["benign"])
    image = load_image(root / "images" / "000001.png")
    assert image.shape == (3, 32, 32) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0


def test_auto_workers_follow_the_machine(phantom_cfg: DataConfig) -> None:
    phantom_cfg.num_workers = "auto"
    data = build_data(phantom_cfg)
    cpus = len(os.sched_getaffinity(0))
    assert data.labeled.num_workers == data.unlabeled.num_workers == cpus
    assert data.test.num_workers == cpus
    phantom_cfg.num_workers = 1  # set explicitly: kept
    assert build_data(phantom_cfg).labeled.num_workers == 1


def test_paper_preset_asks_no_more_workers_than_the_machine_has() -> None:
    """It asked for 4 on any machine (PyTorch warned on 2 cores); now one per usable CPU."""
    from hermes.train.config import load_config

    workers = load_config("paper").data.num_workers
    assert resolve_workers(workers) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", [-1, "many", 1.5])
def test_bad_num_workers_names_the_field(bad) -> None:
    with pytest.raises(ValueError, match="num_workers"):
        DataConfig(num_workers=bad)
