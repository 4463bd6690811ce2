"""The :class:`hermes.comm.Comm` collectives over ``torch.distributed`` (gloo or NCCL).

Gradient convention (what makes data parallelism exact). Rank ``r`` computes a loss ``L_r``
from its own samples and from every rank's gathered features. :meth:`TorchDistComm.all_gather`
back-propagates ``d(sum_r L_r)/dx_r`` to each rank (its backward all-reduces the gradient of the
gathered tensor, then keeps this rank's slice), and DDP / DeepSpeed then *average* parameter
gradients over the ``W`` ranks. The resulting gradient is that of ``(1/W) sum_r L_r``; it equals
the single-process gradient of a global loss ``L`` when ``sum_r L_r = W * L``. For a mean over
the global batch, ``L = sum_i l_i / n`` (``n`` counted over all ranks with
:meth:`TorchDistComm.all_reduce_sum`), rank ``r`` must therefore use
``L_r = W * sum_{i on r} l_i / n``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _gather_sizes(n: int, device: torch.device, group: Any, world_size: int) -> list[int]:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    return [int(s) for s in sizes]


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 with unequal sizes: gather sizes, pad, all_gather, unpad.

    Backward: all-reduce (sum) the gradient of the gathered tensor, return this rank's slice.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, rank: int, world_size: int) -> Tensor:
        sizes = _gather_sizes(x.shape[0], x.device, group, world_size)
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.sizes = group, rank, sizes
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


class TorchDistComm:
    """:class:`hermes.comm.Comm` over an initialised ``torch.distributed`` process group.

    Args:
        group: the process group (``None``: the default group).
    """

    def __init__(self, group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "TorchDistComm: torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first (Ray's TorchTrainer does)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_gather(self, x: Tensor) -> Tensor:
        """Concatenate every rank's ``x`` along dim 0 in rank order; dim 0 may differ by rank.

        Shapes: x (n_r, ...) -> (sum_r n_r, ...). Differentiable (see the module docstring).
        """
        if x.dim() == 0:
            raise ValueError("TorchDistComm.all_gather: x must have a dim 0, got a 0-dim tensor")
        return _AllGather.apply(x, self.group, self.rank, self.world_size)

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """Sum of ``x`` over ranks, as a new tensor (``x`` is left unchanged; no gradient)."""
        y = x.detach().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.group)
        return y
