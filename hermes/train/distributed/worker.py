"""What each Ray Train worker runs: the single-process step inside a DeepSpeed engine.

Per worker: the same data, networks and method as the single-process trainer
(:func:`hermes.train.build_everything`) with a :class:`TorchDistComm`, so thresholds, the
image-level contrast and the memory bank are those of the global batch; its own shuffled
streams (named by rank); one DeepSpeed engine over the method. The global batch is
``workers x data.batch_size`` labeled + ``workers x data.unlabeled_batch_size`` unlabeled.

Checkpoints: every ``checkpoint_every`` steps and at the end, every rank writes its DeepSpeed
shards to a temporary folder and hands it to ``ray.train.report``; Ray merges the ranks' folders
into one checkpoint under the run's storage path::

    checkpoint_<time>/deepspeed/latest, deepspeed/step<N>/*.pt   (DeepSpeed, resumable)
    checkpoint_<time>/model.pt   (fp32 weights in the single-process checkpoint format, for
                                  hermes.evaluate / hermes.predict; also holds the history)

On a restart (``FailureConfig``) or with ``resume_from``, training continues from the last
checkpoint: weights, optimiser, schedule, step, stream positions. Every rank's RNG is reseeded
from ``(seed, rank, step)`` at each checkpoint step, so a resumed run draws what the
uninterrupted run would.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("hermes.train.distributed")

FAULT_ENV = "HERMES_FAULT_AT"  # "RANK:STEP:MARKER_FILE" (tests)
REPORTED = ("loss/", "lr/", "pseudo_cls/kept", "pseudo_seg/kept")


class InjectedFault(RuntimeError):
    """Raised by :func:`maybe_fail` to test recovery."""


def maybe_fail(spec: str | None, rank: int, step: int) -> None:
    """Fault injection for tests: with ``spec = "RANK:STEP:MARKER"``, rank ``RANK`` raises at
    step ``STEP`` the first time only (the marker file records that it did)."""
    if not spec:
        return
    try:
        want_rank, want_step, marker = spec.split(":", 2)
        want = (int(want_rank), int(want_step))
    except ValueError:
        raise ValueError(f"{FAULT_ENV}: expected RANK:STEP:MARKER_FILE, got {spec!r}") from None
    if (rank, step) != want or Path(marker).exists():
        return
    Path(marker).write_text(f"rank {rank} failed at step {step}\n")
    raise InjectedFault(f"injected fault on rank {rank} at step {step} ({FAULT_ENV}={spec})")


def reseed(seed: int, rank: int, step: int) -> None:
    """Seed torch, numpy and ``random`` from ``(seed, rank, step)``."""
    s = (seed * 1_000_003 + rank * 7_919 + step) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _cast(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def _log_to_stderr(rank: int) -> None:
    """Hermes' log lines (not Ray's) on the worker's stderr, which Ray forwards to the job log."""
    root = logging.getLogger("hermes")
    if not any(getattr(h, "_hermes_rank", None) == rank for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S"
            )
        )
        handler._hermes_rank = rank  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # Ray also handles the root logger: print each line once


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``train_config`` (the TrainConfig as a dict),
    ``resume_from`` (a checkpoint folder or ``None``), ``stop_after``, ``fault`` (see
    :func:`maybe_fail`)."""
    import ray.train
    import torch.distributed as dist

    from hermes.train.build import build_everything
    from hermes.train.checkpoint import FORMAT_VERSION, atomic_save
    from hermes.train.config import TrainConfig, from_dict, to_dict
    from hermes.train.distributed.comm import TorchDistComm
    from hermes.train.distributed.engine import (
        build_engine,
        engine_dtype,
        full_state_dict,
        load_deepspeed_config,
    )
    from hermes.train.loop import logs_to_floats
    from hermes.train.optim import group_lrs
    from hermes.train.stream import BatchStream

    cfg: TrainConfig = from_dict(TrainConfig, config["train_config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _log_to_stderr(rank)
    if cfg.distributed.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    comm = TorchDistComm()
    comps = build_everything(cfg, comm, device)
    ds_cfg = load_deepspeed_config(
        cfg.distributed.deepspeed_config,
        micro_batch=cfg.data.batch_size,
        grad_clip=cfg.optim.grad_clip,
        use_gpu=cfg.distributed.use_gpu,
    )
    engine = build_engine(comps.method, comps.model.cls, comps.model.seg, cfg.optim, ds_cfg)
    dtype = engine_dtype(engine)
    streams = {
        name: BatchStream(getattr(comps.data, name), cfg.seed, f"{name}/rank{rank}")
        for name in ("labeled", "unlabeled")
    }

    step, history, evals = 0, [], []
    source = ray.train.get_checkpoint()
    if source is None and config.get("resume_from"):
        source = ray.train.Checkpoint.from_directory(config["resume_from"])
    if source is not None:
        with source.as_directory() as folder:
            path, client = engine.load_checkpoint(str(Path(folder) / "deepspeed"))
            if path is None:
                raise FileNotFoundError(
                    f"no DeepSpeed checkpoint under {Path(folder) / 'deepspeed'}"
                )
        step = int(client["step"])
        history, evals = list(client["history"]), list(client["evals"])
        for name, stream in streams.items():
            stream.load_state_dict(client["streams"][name])
        logger.info("resumed at step %d from %s", step, path)

    total = cfg.optim.steps
    stop = config.get("stop_after")
    end = total if stop is None else min(int(stop), total)
    every = cfg.checkpoint_every
    supervised = cfg.method.mode == "supervised"
    start, t0 = step, time.perf_counter()

    def save(metrics: dict[str, float]) -> None:
        client = {
            "step": step,
            "history": history,
            "evals": evals,
            "streams": {k: s.state_dict() for k, s in streams.items()},
        }
        weights = full_state_dict(engine)  # a collective under ZeRO-3: every rank
        with tempfile.TemporaryDirectory(prefix="hermes-ckpt-") as tmp:
            engine.save_checkpoint(f"{tmp}/deepspeed", tag=f"step{step}", client_state=client)
            if rank == 0:
                export = {
                    "format": FORMAT_VERSION,
                    "config": to_dict(cfg),
                    "step": step,
                    "method": weights,
                    "history": history,
                    "evals": evals,
                    "best": None,
                    "classes": list(comps.data.classes),
                    "distributed": {"workers": world},
                }
                atomic_save(export, Path(tmp) / "model.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if rank == 0:
            logger.info("checkpoint at step %d", step)

    engine.train()
    values: dict[str, float] = {}
    while step < end:
        if step == start or (every and step % every == 0):
            reseed(cfg.seed, rank, step)
        maybe_fail(config.get("fault"), rank, step)
        labeled = _cast(next(streams["labeled"]), device, dtype)
        unlabeled = None if supervised else _cast(next(streams["unlabeled"]), device, dtype)
        loss, logs = engine(labeled, unlabeled, step=step, total_steps=total)
        engine.backward(loss)
        engine.step()
        step += 1
        if (step - 1) % cfg.log_every == 0 or step == end:
            values = logs_to_floats(logs)
            values.update(group_lrs(engine.optimizer.param_groups))
            history.append({"step": float(step - 1), **values})
            if rank == 0:
                rate = (step - start) / (time.perf_counter() - t0)
                logger.info(
                    "step %d/%d loss %.4f (%.2f steps/s, %d workers)",
                    step,
                    total,
                    values.get("loss/total", float("nan")),
                    rate,
                    world,
                )
        # to Ray: losses, learning rates and kept fractions (the checkpoint holds everything)
        metrics = {"step": step, **{k: v for k, v in values.items() if k.startswith(REPORTED)}}
        if (every and step % every == 0) or step == end:
            save(metrics)
        elif (step - 1) % cfg.log_every == 0:
            ray.train.report(metrics)
    if dist.is_initialized():
        dist.barrier()
