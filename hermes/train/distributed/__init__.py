"""Distributed training: Ray Train workers, each running the method in a DeepSpeed engine.

- :mod:`~hermes.train.distributed.comm`: :class:`TorchDistComm`, the method's collectives over
  ``torch.distributed`` (imports torch only).
- :mod:`~hermes.train.distributed.optim`: :class:`BranchOptimizer` (SGD + Adam groups).
- :mod:`~hermes.train.distributed.engine`: DeepSpeed config and engine.
- :mod:`~hermes.train.distributed.worker`: the per-worker loop (checkpoints, restarts).
- :mod:`~hermes.train.distributed.trainer`: :func:`train_on_ray` (``TorchTrainer``).

Ray and DeepSpeed are imported only when a distributed run starts.
"""

from __future__ import annotations

from typing import Any


def train_on_ray(*args: Any, **kwargs: Any) -> Any:
    """See :func:`hermes.train.distributed.trainer.train_on_ray`."""
    from hermes.train.distributed.trainer import train_on_ray as run

    return run(*args, **kwargs)


__all__ = ["train_on_ray"]
