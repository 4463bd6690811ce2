"""Torch datasets over :class:`~hermes.data.readers.Record` lists: labeled, unlabeled, test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from hermes.data.io import load_image, load_masks
from hermes.data.readers import Record
from hermes.data.transforms import LabeledTransform, UnlabeledTransform, resize_pair


def load_sample(record: Record, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read, check and resize one sample.

    Shapes:
        returns image (3, S, S) float in [0, 1] and mask (S, S) int64 in {0, 1}.

    Raises:
        ValueError: unreadable file, or mask size differs from the image (names the files).
    """
    image = load_image(record.image)
    mask = load_masks(record.masks, record.image)
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"mask {record.masks[0]} has size {tuple(mask.shape)} (H, W) but its image "
            f"{record.image} has size {tuple(image.shape[1:])}"
        )
    return resize_pair(image, mask, image_size)


class _RecordDataset(Dataset):
    """Shared loading and optional in-memory caching of resized samples."""

    def __init__(
        self,
        records: Sequence[Record],
        classes: Sequence[str],
        image_size: int,
        cache: bool = True,
    ) -> None:
        self.records = list(records)
        self.classes = tuple(classes)
        self.class_index = {c: k for k, c in enumerate(self.classes)}
        unknown = sorted({r.label for r in self.records} - set(self.classes))
        if unknown:
            raise ValueError(f"records carry class(es) {unknown} outside {list(self.classes)}")
        self.image_size = image_size
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        record = self.records[index]
        cached = self._cache.get(index)
        if cached is None:
            image, mask = load_sample(record, self.image_size)
            # stored as float16 / uint8 (whether cached or not, so results do not depend on it)
            cached = (image.half(), mask.to(torch.uint8))
            if self.cache:
                self._cache[index] = cached
        image, mask = cached[0].float(), cached[1].long()
        label = torch.tensor(self.class_index[record.label], dtype=torch.int64)
        return image, mask, label, record.id


class LabeledDataset(_RecordDataset):
    """Items ``{"image": (3,S,S), "mask": (S,S) int64, "label": () int64, "id": str}``.

    With ``augment=False`` this is the test dataset (resize + normalise only).
    """

    def __init__(
        self,
        records: Sequence[Record],
        classes: Sequence[str],
        image_size: int,
        augment: bool = True,
        cache: bool = True,
        geometry: str = "rot_flip",
    ) -> None:
        super().__init__(records, classes, image_size, cache)
        self.transform = LabeledTransform(augment, geometry, image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, label, sid = self._sample(index)
        image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "label": label, "id": sid}


class UnlabeledDataset(_RecordDataset):
    """Items ``{"weak", "strong": (3,S,S), "mask": (S,S), "label": (), "id": str}``.

    ``mask`` and ``label`` are the true values, for monitoring only.
    """

    def __init__(
        self,
        records: Sequence[Record],
        classes: Sequence[str],
        image_size: int,
        cache: bool = True,
        geometry: str = "rot_flip",
    ) -> None:
        super().__init__(records, classes, image_size, cache)
        self.transform = UnlabeledTransform(image_size, geometry)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, label, sid = self._sample(index)
        weak, strong, mask = self.transform(image, mask)
        return {"weak": weak, "strong": strong, "mask": mask, "label": label, "id": sid}
