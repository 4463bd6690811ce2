"""Endless, resumable batch streams over the (finite) training loaders.

Each epoch's order is a function of ``(seed, stream name, epoch)``: the sampler's generator and
the loader's generator (which seeds the worker processes) are reseeded at the start of every
epoch. The position is ``(epoch, batches consumed in it)``; restoring it reseeds that epoch and
skips the consumed batches (their augmentation draws on the global RNG, which the trainer
restores afterwards), so the batches after a resume are those of an uninterrupted run.
Exactness holds with ``num_workers = 0``; with workers the order is still reproduced, and the
augmentations are too when the workers are not persistent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader


def epoch_seed(seed: int, name: str, epoch: int) -> int:
    """A 62-bit seed derived from ``(seed, name, epoch)``, stable across processes."""
    digest = hashlib.sha256(f"{seed}/{name}/{epoch}".encode()).hexdigest()
    return int(digest[:15], 16)


class BatchStream:
    """``next(stream)`` yields batches forever, epoch after epoch.

    Args:
        loader: a DataLoader with a shuffling sampler that has a ``generator`` attribute
            (``RandomSampler``); other samplers are iterated as they are.
        seed: the run's seed.
        name: distinguishes the streams of one run (``"labeled"``, ``"unlabeled"``).
    """

    def __init__(self, loader: DataLoader, seed: int, name: str) -> None:
        self.loader, self.seed, self.name = loader, seed, name
        self.epoch = 0
        self.index = 0  # batches consumed in the current epoch
        self._it: Iterator[Any] | None = None

    def _start_epoch(self) -> None:
        s = epoch_seed(self.seed, self.name, self.epoch)
        self.loader.generator = torch.Generator().manual_seed(s)
        sampler = self.loader.sampler
        if hasattr(sampler, "generator"):
            sampler.generator = torch.Generator().manual_seed(s ^ 0x5DEECE66D)
        self._it = iter(self.loader)
        self.index = 0

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._start_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch += 1
            self._start_epoch()
            batch = next(self._it)  # an empty epoch is a configuration error, let it raise
        self.index += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Reposition at ``state``. Consumes the global RNG for the skipped batches' augmentation:
        restore the RNG state *after* this."""
        self.epoch = int(state["epoch"])
        self._start_epoch()
        for _ in range(int(state["index"])):
            next(self._it)
        self.index = int(state["index"])

    def __len__(self) -> int:
        return len(self.loader)
