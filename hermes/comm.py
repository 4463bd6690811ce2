"""Collective communication as the method sees it.

The method (``hermes.method``) never imports ``torch.distributed`` directly: it receives a
:class:`Comm`. A single process uses :class:`LocalComm`; distributed training passes an
implementation over ``torch.distributed`` (``hermes.train.distributed``), so that thresholds
and contrastive pairs are those of the global batch.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Comm(Protocol):
    """What the method needs from the process group."""

    rank: int
    world_size: int

    def all_gather(self, x: Tensor) -> Tensor:
        """Concatenate every rank's ``x`` along dim 0 in rank order (shapes may differ in dim 0).
        Differentiable: the gradient of the result flows back to this rank's ``x``, summed over
        every rank's use of it."""
        ...

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """Sum of ``x`` over ranks (not differentiable; for counts and statistics)."""
        ...


class LocalComm:
    """The single-process group: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_gather(self, x: Tensor) -> Tensor:
        return x

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        return x
