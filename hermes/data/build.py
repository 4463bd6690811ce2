"""``DataConfig`` -> ``Data``: records, split, datasets and loaders in one call."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from hermes.data.datasets import LabeledDataset, UnlabeledDataset
from hermes.data.readers import Record, read_dataset, read_folder
from hermes.data.splits import Split, make_split
from hermes.data.transforms import GEOMETRIES

logger = logging.getLogger(__name__)

DATASETS = ("phantom", "busi", "udiat", "folder")


@dataclass
class DataConfig:
    """Where the data comes from, how it is split and batched.

    Attributes:
        dataset: ``"phantom"`` (generated, the default), ``"busi"``, ``"udiat"`` or ``"folder"``.
        root: dataset folder (not used by the phantom).
        classes: classes taking part, in label order (BUSI's ``normal`` is left out by default).
        image_size: side of the square network input.
        geometry: the training views' joint geometric augmentation: ``"rot_flip"`` (the
            public code's rot90 + flip or small rotation) or ``"flip_crop"`` (horizontal flip
            and random resized crop, keeping the probe at the top).
        labeled: label budget, a count (int) or a fraction of the train part (float).
        test_fraction: per-class share held out for testing.
        seed: split seed (and phantom seed).
        batch_size: labeled batch size.
        unlabeled_batch_size: unlabeled batch size.
        num_workers: DataLoader worker processes: an int >= 0 (0: load in the training process,
            which keeps a resumed run bit-exact), or ``"auto"``: one per CPU this process may
            run on (``len(os.sched_getaffinity(0))``), so never more than the machine has.
        split_file: JSON split; loaded if it exists, else the new split is written there.
        phantom_size: number of phantom images.
        phantom_image_size: side of the generated phantom images.
        phantom_malignant_fraction: share of malignant phantom images.
        duplicate_distance: phash Hamming distance for near-duplicates (negative: off).
        cache_images: keep decoded, resized samples in memory.
        cache_dir: phantom cache folder (default ``$HERMES_CACHE/phantom`` or
            ``~/.cache/hermes/phantom``).
    """

    dataset: str = "phantom"
    root: str | None = None
    classes: tuple[str, ...] = ("benign", "malignant")
    image_size: int = 224
    geometry: str = "rot_flip"
    labeled: int | float = 50
    test_fraction: float = 0.3
    seed: int = 0
    batch_size: int = 8
    unlabeled_batch_size: int = 8
    num_workers: int | str = 0
    split_file: str | None = None
    phantom_size: int = 400
    phantom_image_size: int = 224
    phantom_malignant_fraction: float = 0.5
    duplicate_distance: int = 10
    cache_images: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"DataConfig.dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset != "phantom" and not self.root:
            raise ValueError(f"DataConfig.root is required for dataset {self.dataset!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(
                f"DataConfig.geometry must be one of {GEOMETRIES}, got {self.geometry!r}"
            )
        self.classes = tuple(c.lower() for c in self.classes)
        if len(self.classes) < 2:
            raise ValueError(f"DataConfig.classes needs at least two classes, got {self.classes}")
        if self.num_workers != "auto" and (
            not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise ValueError(
                f"DataConfig.num_workers must be an int >= 0 or 'auto', got {self.num_workers!r}"
            )
        for name in ("image_size", "batch_size", "unlabeled_batch_size", "phantom_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DataConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Data:
    """The three loaders and what they were built from (see the package docstring)."""

    labeled: DataLoader
    unlabeled: DataLoader
    test: DataLoader
    classes: tuple[str, ...]
    split: Split
    records: list[Record] = field(repr=False, default_factory=list)
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_records(cfg: DataConfig) -> tuple[list[Record], Path]:
    """Read (or generate, for the phantom) the records of ``cfg``; return them and the root."""
    if cfg.dataset == "phantom":
        # imported here so that ``python -m hermes.data.phantom`` runs without a runpy warning
        from hermes.data.phantom import PhantomConfig, ensure_phantom

        unknown = set(cfg.classes) - {"benign", "malignant"}
        if unknown:
            raise ValueError(f"the phantom has classes benign and malignant, not {sorted(unknown)}")
        pcfg = PhantomConfig(
            cfg.phantom_size, cfg.phantom_image_size, cfg.phantom_malignant_fraction, cfg.seed
        )
        root = ensure_phantom(pcfg, cfg.cache_dir)
        return read_folder(root, cfg.classes), root
    if not cfg.root:
        raise ValueError(f"DataConfig.root is required for dataset {cfg.dataset!r}")
    root = Path(cfg.root).expanduser()
    return read_dataset(cfg.dataset, root, cfg.classes), root


def resolve_split(cfg: DataConfig, records: list[Record]) -> Split:
    """Load ``cfg.split_file`` if it exists; else make the split (and save it if asked)."""
    if cfg.split_file and Path(cfg.split_file).is_file():
        split = Split.load(cfg.split_file)
        split.check(records)
        logger.info("split loaded from %s", cfg.split_file)
        return split
    distance = -1 if cfg.dataset == "phantom" else cfg.duplicate_distance
    split = make_split(records, cfg.labeled, cfg.test_fraction, cfg.seed, distance)
    if cfg.split_file:
        split.save(cfg.split_file)
        logger.info("split saved to %s", cfg.split_file)
    return split


def resolve_workers(num_workers: int | str) -> int:
    """``DataConfig.num_workers`` as a count: ``"auto"`` is the number of CPUs this process may
    run on (``os.sched_getaffinity``; ``os.cpu_count()`` where that does not exist)."""
    if num_workers != "auto":
        return int(num_workers)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _train_loader(
    ds: Dataset, batch_size: int, cfg: DataConfig, seed_offset: int, workers: int
) -> DataLoader:
    """Shuffled, ``drop_last`` loader that still yields batches when ``len(ds) < batch_size``."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + seed_offset)
    n = len(ds)
    if n == 0:
        raise ValueError("cannot build a training loader over an empty set")
    small = n < batch_size
    sampler = RandomSampler(
        ds, replacement=small, num_samples=batch_size if small else None, generator=gen
    )
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def build_data(cfg: DataConfig) -> Data:
    """Build the labeled, unlabeled and test loaders of ``cfg``.

    Batches: labeled and test ``{"image": (B,3,S,S) float, "mask": (B,S,S) int64,
    "label": (B,) int64, "id": list[str]}``; unlabeled ``{"weak", "strong": (B,3,S,S),
    "mask": (B,S,S), "label": (B,), "id": list[str]}`` (mask and label for monitoring only).
    """
    records, root = load_records(cfg)
    split = resolve_split(cfg, records)
    by_id = {r.id: r for r in records}
    part = {
        name: [by_id[i] for i in ids]
        for name, ids in (
            ("labeled", split.labeled),
            ("unlabeled", split.unlabeled),
            ("test", split.test),
        )
    }
    common = {"classes": cfg.classes, "image_size": cfg.image_size, "cache": cfg.cache_images}
    labeled = LabeledDataset(part["labeled"], augment=True, geometry=cfg.geometry, **common)
    unlabeled = UnlabeledDataset(part["unlabeled"], geometry=cfg.geometry, **common)
    test = LabeledDataset(part["test"], augment=False, **common)
    workers = resolve_workers(cfg.num_workers)
    logger.info(
        "data %s: %d labeled, %d unlabeled, %d test (%s); %d loader worker(s)",
        cfg.dataset,
        len(labeled),
        len(unlabeled),
        len(test),
        ", ".join(cfg.classes),
        workers,
    )
    return Data(
        labeled=_train_loader(labeled, cfg.batch_size, cfg, 1, workers),
        unlabeled=_train_loader(unlabeled, cfg.unlabeled_batch_size, cfg, 2, workers),
        test=DataLoader(test, batch_size=cfg.batch_size, shuffle=False, num_workers=workers),
        classes=cfg.classes,
        split=split,
        records=records,
        root=root,
    )
