"""What a training run is at any step (:class:`TrainState`) and what it returns
(:class:`RunResult`); shared by the trainers and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hermes.eval.evaluate import Evaluation
    from hermes.train.config import TrainConfig


@dataclass
class TrainState:
    """Progress of a run: the next step, logged values, evaluations and the best one."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None


@dataclass
class RunResult:
    """What :func:`train` returns."""

    cfg: TrainConfig
    out_dir: Path
    state: TrainState
    final: Evaluation | None
    checkpoint: Path
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        return self.final.metrics if self.final is not None else {}
