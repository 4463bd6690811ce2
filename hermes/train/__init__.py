"""Training: configuration, the shared step, the single-process loop, checkpoints, reports.

For the distributed trainer (``hermes.train.distributed``) the reusable pieces are
:func:`build_everything` (data, networks, method, optimisers, schedules), :func:`train_step`,
:class:`BatchStream`, :func:`save_checkpoint` / :func:`restore`, :func:`run_evaluation` and
:func:`hermes.train.report.write_run_report`.
"""

from hermes.train.build import Components, build_everything, build_optimizers, resolve_device
from hermes.train.config import (
    DistributedConfig,
    EvalConfig,
    OptimConfig,
    TrainConfig,
    load_config,
    save_config,
    to_dict,
)
from hermes.train.loop import (
    RunResult,
    TrainState,
    logs_to_floats,
    restore,
    run_evaluation,
    save_checkpoint,
    train,
)
from hermes.train.step import train_step
from hermes.train.stream import BatchStream

__all__ = [
    "BatchStream",
    "Components",
    "DistributedConfig",
    "EvalConfig",
    "OptimConfig",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "build_everything",
    "build_optimizers",
    "load_config",
    "logs_to_floats",
    "resolve_device",
    "restore",
    "run_evaluation",
    "save_checkpoint",
    "save_config",
    "to_dict",
    "train",
    "train_step",
]
