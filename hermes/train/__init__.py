"""Training: configuration, the shared step, one loop for every engine, checkpoints, reports.

:func:`train` runs in one process (:class:`LocalEngine`, ``last.pt`` / ``best.pt``); the
distributed trainer (``hermes.train.distributed``) runs the same :func:`run_loop` on each Ray
worker with a DeepSpeed engine. Both build with :func:`build_everything` (data, networks,
method, optimisers, schedules).
"""

from hermes.train.build import Components, build_everything, build_optimizers, resolve_device
from hermes.train.checkpoint import Checkpoints, FileCheckpoints
from hermes.train.config import (
    DistributedConfig,
    EvalConfig,
    OptimConfig,
    TrainConfig,
    load_config,
    save_config,
    to_dict,
)
from hermes.train.engine import Engine, LocalEngine
from hermes.train.loop import logs_to_floats, run_evaluation, run_loop, train
from hermes.train.state import RunResult, TrainState
from hermes.train.step import train_step
from hermes.train.stream import BatchStream

__all__ = [
    "BatchStream",
    "Checkpoints",
    "Components",
    "DistributedConfig",
    "Engine",
    "EvalConfig",
    "FileCheckpoints",
    "LocalEngine",
    "OptimConfig",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "build_everything",
    "build_optimizers",
    "load_config",
    "logs_to_floats",
    "resolve_device",
    "run_evaluation",
    "run_loop",
    "save_config",
    "to_dict",
    "train",
    "train_step",
]
