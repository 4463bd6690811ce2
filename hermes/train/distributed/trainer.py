"""``python -m hermes.train --set distributed.workers=N``: the run on Ray Train.

:func:`train_on_ray` is the distributed counterpart of :func:`hermes.train.train` (same
arguments, same :class:`~hermes.train.RunResult`): it starts a ``TorchTrainer`` with N workers
running :func:`~hermes.train.distributed.worker.train_loop_per_worker` (the training loop of
one process, over a DeepSpeed engine: periodic evaluation, ``best.pt``, the final evaluation
and the report as in one process), restarts it from its last checkpoint after a failure
(``distributed.max_failures``), then, on the driver, copies the consolidated weights to
``<out_dir>/model.pt``.

Where things land (``out_dir`` = ``cfg.out_dir``, ``runs/default/hermes`` by default)::

    <out_dir>/ray/<name>/checkpoint_*/     Ray checkpoints (DeepSpeed shards, rank files, model.pt)
    <out_dir>/model.pt                     final weights, for hermes.evaluate / hermes.predict
    <out_dir>/best.pt                      weights at the best evaluation (model.pt's format)
    <out_dir>/config.yaml, tensorboard/    as in one process
    <out_dir>/report/                      metrics.json, summary.md, figures
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hermes.train.config import TrainConfig, to_dict
from hermes.train.distributed.engine import check_method, load_deepspeed_config
from hermes.train.distributed.worker import FAULT_ENV, train_loop_per_worker
from hermes.train.preflight import check_out_dir

logger = logging.getLogger("hermes.train.distributed")


def _ray_init(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # In a job (`ray job submit`) RAY_ADDRESS names the cluster; otherwise a private local Ray
    # is started ("local"), never a stray cluster that happens to run on the machine.
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True)


def train_on_ray(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    report: bool = True,
    overwrite: bool = False,
) -> Any:
    """Train ``cfg`` on ``cfg.distributed.workers`` Ray workers with DeepSpeed.

    Args:
        cfg: the configuration; ``cfg.distributed`` says how many workers, GPUs or not, the
            DeepSpeed config, the Ray address and how many failures to survive.
        resume: a checkpoint folder of an earlier Ray run (``.../checkpoint_*``) to continue.
        stop_after: stop after this many steps (the schedule still spans ``optim.steps``).
        report: write the report (rank 0, at the end).
        overwrite: replace a run that ``cfg.out_dir`` already holds (without it, such a folder
            is an error unless ``resume`` lies inside it; see
            :func:`hermes.train.preflight.check_out_dir`).

    Returns:
        :class:`hermes.train.RunResult` (``checkpoint`` is ``<out_dir>/model.pt``).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    dcfg = cfg.distributed
    if resume is not None and not (Path(resume) / "deepspeed").is_dir():
        raise FileNotFoundError(
            f"resume: {resume} is not a checkpoint of a distributed run (no deepspeed/ folder)"
        )
    ds_cfg = load_deepspeed_config(
        dcfg.deepspeed_config,
        micro_batch=cfg.data.batch_size,
        grad_clip=cfg.optim.grad_clip,
        use_gpu=dcfg.use_gpu,
    )
    check_method(cfg.method, ds_cfg)  # before any worker starts
    check_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite)
    start = time.perf_counter()
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _ray_init(dcfg.address)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train_config": to_dict(replace(cfg, out_dir=str(out))),  # workers run elsewhere
            "resume_from": None if resume is None else str(Path(resume).resolve()),
            "stop_after": stop_after,
            "report": report,
            "fault": os.environ.get(FAULT_ENV),
        },
        torch_config=TorchConfig(backend="nccl" if dcfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=dcfg.workers,
            use_gpu=dcfg.use_gpu,
            resources_per_worker={"CPU": dcfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=str(out / "ray"),
            failure_config=FailureConfig(max_failures=dcfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray run {cfg.name} finished without a checkpoint ({result.error})")
    ckpt_dir = Path(result.checkpoint.path)
    model_path = out / "model.pt"
    shutil.copyfile(ckpt_dir / "model.pt", model_path)
    logger.info("Ray checkpoint: %s; weights: %s", ckpt_dir, model_path)
    return _result(cfg, out, model_path, start)


def _result(cfg: TrainConfig, out: Path, model_path: Path, start: float) -> Any:
    """The run's :class:`~hermes.train.RunResult`, read from its final weights' checkpoint; the
    final metrics are those of its last evaluation when that was at the last step."""
    from hermes.eval.evaluate import Evaluation
    from hermes.train.checkpoint import load_checkpoint
    from hermes.train.state import RunResult, TrainState

    ckpt = load_checkpoint(model_path)
    state = TrainState(
        step=int(ckpt["step"]),
        history=list(ckpt["history"]),
        evals=list(ckpt["evals"]),
        best=ckpt["best"],
    )
    final = None
    if state.step == cfg.optim.steps and state.evals and state.evals[-1]["step"] == state.step:
        final = Evaluation(metrics={k: v for k, v in state.evals[-1].items() if k != "step"})
    return RunResult(cfg, out, state, final, model_path, time.perf_counter() - start)
