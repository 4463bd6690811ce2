"""One optimiser with an SGD group and an Adam group, for one DeepSpeed engine.

The method trains the classification branch with SGD and the segmentation branch with Adam
(the paper's optimisation). A DeepSpeed engine takes one client optimiser, and ZeRO flattens
each of its parameter groups into partitions, replacing ``group["params"]`` in place. So the two
branches become two parameter groups of one :class:`BranchOptimizer`, whose ``step`` runs
PyTorch's own ``SGD`` and ``Adam`` on their groups. The inner optimisers share the outer
optimiser's group dicts and state, so:

- ZeRO's in-place replacement of ``group["params"]`` reaches the inner optimiser;
- ``state_dict()`` / ``load_state_dict()`` are the standard ones (one state, one group list);
- the update is exactly PyTorch's SGD and Adam (tested against them).

Decision (issue 6): one engine with this composite optimiser, not two engines. Two engines
would mean two ZeRO partitions, two gradient all-reduces and two checkpoints per step; one
engine keeps the single backward pass of ``L_cls + L_seg`` that the detached junctions
make exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from hermes.train.optim import ALGORITHMS


class BranchOptimizer(torch.optim.Optimizer):
    """Parameter groups that each name their algorithm (``group["algorithm"]``: sgd | adam |
    adamw).

    Args:
        param_groups: dicts with ``params``, ``algorithm`` and that algorithm's options
            (``lr``, ``momentum``, ``weight_decay``, ``betas``, ``eps``, ...); options left out
            take PyTorch's defaults for the algorithm.
    """

    def __init__(self, param_groups: Iterable[dict[str, Any]]) -> None:
        groups = [dict(g) for g in param_groups]
        for i, g in enumerate(groups):
            if g.get("algorithm") not in ALGORITHMS:
                raise ValueError(
                    f"BranchOptimizer: param group {i} needs 'algorithm' in {tuple(ALGORITHMS)}, "
                    f"got {g.get('algorithm')!r}"
                )
            if "lr" not in g:
                raise ValueError(f"BranchOptimizer: param group {i} needs 'lr'")
        super().__init__(groups, defaults={})
        self._link()

    def _link(self) -> None:
        """(Re)build the inner optimisers over this optimiser's own group dicts and state."""
        self._inner: list[torch.optim.Optimizer] = []
        for name, cls in ALGORITHMS.items():
            mine = [g for g in self.param_groups if g["algorithm"] == name]
            if not mine:
                continue
            inner = cls([{"params": g["params"]} for g in mine], lr=mine[0]["lr"])
            for shared, built in zip(mine, inner.param_groups, strict=True):
                for key, value in built.items():  # the algorithm's defaults, where not set
                    shared.setdefault(key, value)
            inner.param_groups = mine
            inner.state = self.state
            self._inner.append(inner)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self._inner:
            inner.state = self.state  # ZeRO and load_state_dict may replace either
            inner.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()
