"""Per-class queues of past embeddings (the memory bank of the paper's figure).

The queues are buffers of the module, so they travel with ``state_dict`` (checkpoints) and
``.to(device)``. Enqueueing is vectorised and free of host synchronisation; reading the filled
entries selects a data-dependent number of rows (one host synchronisation per read).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClassQueues(nn.Module):
    """``num_classes`` FIFO queues of ``size`` detached ``dim``-dimensional features each.

    Under data parallelism every rank must enqueue the same (gathered) features, so that the
    queues stay identical on every rank.
    """

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or size < 1 or dim < 1:
            raise ValueError(
                f"ClassQueues: num_classes, size and dim must be >= 1, got {num_classes}, {size}, {dim}"
            )
        self.num_classes, self.size, self.dim = num_classes, size, dim
        # One spare row at the end absorbs the writes of entries that are not enqueued.
        self.register_buffer("features", torch.zeros(num_classes * size + 1, dim))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def enqueue(self, features: Tensor, labels: Tensor, keep: Tensor | None = None) -> None:
        """Append ``features[i]`` to queue ``labels[i]`` where ``keep[i]``, oldest out first.

        Shapes: features (n, dim); labels (n,) int64 in [0, num_classes) (others are skipped);
        keep (n,) bool. When a class gets more than ``size`` entries at once, the last ``size``
        are kept.
        """
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"ClassQueues.enqueue: features must be (n, {self.dim}), got {tuple(features.shape)}"
            )
        k, c = self.size, self.num_classes
        labels = labels.long()
        in_range = (labels >= 0) & (labels < c)
        keep = in_range if keep is None else keep.bool() & in_range
        y = labels.clamp(0, c - 1)
        onehot = (y[:, None] == torch.arange(c, device=y.device)[None, :]) & keep[:, None]
        rank = (onehot.long().cumsum(0) - 1).gather(1, y[:, None]).squeeze(1)  # order in class
        total = onehot.long().sum(0)  # (C,)
        skip = (total - k).clamp(min=0)  # oldest of this call that do not fit
        write = keep & (rank >= skip[y])
        slot = (self.pointer[y] + rank - skip[y]) % k
        row = torch.where(write, y * k + slot, torch.full_like(y, c * k))
        self.features.index_copy_(0, row, features.detach().to(self.features.dtype))
        written = total.clamp(max=k)
        self.pointer.copy_((self.pointer + written) % k)
        self.count.copy_((self.count + written).clamp(max=k))

    def filled(self) -> tuple[Tensor, Tensor]:
        """The stored features and their classes: ``(m, dim)`` and ``(m,)`` (host sync)."""
        k, c = self.size, self.num_classes
        slots = torch.arange(k, device=self.count.device)
        valid = (slots[None, :] < self.count[:, None]).reshape(-1)
        labels = torch.arange(c, device=self.count.device).repeat_interleave(k)
        return self.features[: c * k][valid], labels[valid]
