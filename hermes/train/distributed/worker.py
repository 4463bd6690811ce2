"""What each Ray Train worker runs: the training loop of one process
(:func:`hermes.train.loop.run_loop`) with the method inside a DeepSpeed engine.

Per worker: the same data, networks and method as the single-process trainer
(:func:`hermes.train.build_everything`) with a :class:`TorchDistComm`, so thresholds, the
image-level contrast and the memory bank are those of the global batch; its own shuffled
streams (named by rank); one :class:`~hermes.train.distributed.engine.DeepSpeedEngine`. The
global batch is ``workers x data.batch_size`` labeled + ``workers x data.unlabeled_batch_size``
unlabeled. Logging, periodic evaluation, ``best.pt`` and the report are the loop's, as in one
process; rank 0 writes the files (``config.yaml``, ``tensorboard/``, ``best.pt``, ``report/``)
into ``out_dir``, which must be storage every node mounts.

RNG: each rank seeds torch, numpy and ``random`` from ``(seed, rank)`` once its engine is
built, so the ranks draw different augmentations. From then on it is the loop's rule: every
checkpoint holds each rank's RNG states and a resume (or a restart after a failure) restores
them, so the resumed run draws what the uninterrupted run would.

Checkpoints (:class:`RayCheckpoints`): every ``checkpoint_every`` steps and where the run
stops, every rank writes its part to a temporary folder and hands it to ``ray.train.report``;
Ray merges the ranks' folders into one checkpoint under the run's storage path::

    checkpoint_<time>/deepspeed/latest, deepspeed/step<N>/*.pt   (DeepSpeed, resumable)
    checkpoint_<time>/rank<r>.pt   (rank r's data positions, RNG states and module buffers)
    checkpoint_<time>/model.pt     (fp32 weights in the single-process checkpoint format, for
                                    hermes.evaluate / hermes.predict; also holds the history)

``best.pt`` has ``model.pt``'s format. On a restart (``FailureConfig``) or with
``resume_from``, training continues from the last checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hermes.train.checkpoint import Checkpoints, atomic_save, checkpoint_dict
from hermes.train.config import TrainConfig
from hermes.train.distributed.engine import DeepSpeedEngine

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


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s RNGs in a run seeded with ``seed``."""
    return (seed * 1_000_003 + rank * 7_919) % 2**31


class RayCheckpoints(Checkpoints):
    """A distributed run's checkpoints: Ray checkpoints of DeepSpeed folders (see the module
    docstring), ``best.pt`` in ``out_dir`` from rank 0, and the logged values reported to Ray.

    Args:
        engine: this rank's engine.
        cfg: the run's configuration.
        classes: the data's class names.
        rank, world: this rank and the number of workers.
        resume_from: a checkpoint folder to continue when Ray has none of this run (a restart
            after a failure continues Ray's latest).
    """

    def __init__(
        self,
        engine: DeepSpeedEngine,
        cfg: TrainConfig,
        classes: Sequence[str],
        rank: int,
        world: int,
        resume_from: str | None = None,
    ) -> None:
        self.engine, self.cfg, self.classes = engine, cfg, list(classes)
        self.rank, self.world, self.resume_from = rank, world, resume_from
        self.last = Path(cfg.out_dir) / "ray"

    def restore(self) -> dict[str, Any] | None:
        import ray.train

        source = ray.train.get_checkpoint()
        if source is None and self.resume_from:
            source = ray.train.Checkpoint.from_directory(self.resume_from)
        if source is None:
            return None
        with source.as_directory() as folder:
            logger.info("restoring %s", source.path)
            return self.engine.load(Path(folder))

    def _export(self, weights: dict[str, torch.Tensor], run: dict[str, Any]) -> dict[str, Any]:
        """The single-process checkpoint format with the weights and the run's entries."""
        return checkpoint_dict(
            self.cfg, self.classes, method=weights, distributed={"workers": self.world}, **run
        )

    def write(self, folder: Path, run: dict[str, Any], own: dict[str, Any]) -> None:
        """This rank's part of a checkpoint in ``folder`` (``model.pt`` from rank 0)."""
        weights = self.engine.weights()  # a collective under ZeRO-3: every rank
        self.engine.save(folder, run, own)
        if self.rank == 0:
            atomic_save(self._export(weights, run), folder / "model.pt")

    def save(self, run: dict[str, Any], own: dict[str, Any], metrics: dict[str, float]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="hermes-ckpt-") as tmp:
            self.write(Path(tmp), run, own)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(_reported(run["step"], metrics), checkpoint=checkpoint)
        if self.rank == 0:
            logger.info("checkpoint at step %d", run["step"])

    def save_best(self, run: dict[str, Any], own: dict[str, Any]) -> None:
        weights = self.engine.weights()
        if self.rank == 0:
            atomic_save(self._export(weights, run), Path(self.cfg.out_dir) / "best.pt")

    def logged(self, step: int, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report(_reported(step, metrics))


def _reported(step: int, metrics: dict[str, float]) -> dict[str, float]:
    """To Ray: losses, learning rates and kept fractions (the checkpoint holds everything)."""
    return {"step": step, **{k: v for k, v in metrics.items() if k.startswith(REPORTED)}}


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
    ``resume_from`` (a checkpoint folder or ``None``), ``stop_after``, ``report`` (write the
    report at the end), ``fault`` (see :func:`maybe_fail`)."""
    import ray.train
    import torch.distributed as dist

    from hermes.train.build import build_everything, seed_everything
    from hermes.train.config import train_config_from_dict
    from hermes.train.distributed.comm import TorchDistComm
    from hermes.train.distributed.engine import build_engine, load_deepspeed_config
    from hermes.train.loop import run_loop

    # log lines, not a progress bar, in the job log
    cfg = replace(train_config_from_dict(config["train_config"]), progress=False)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _log_to_stderr(rank)
    if cfg.distributed.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    comps = build_everything(cfg, TorchDistComm(), device)
    ds_cfg = load_deepspeed_config(
        cfg.distributed.deepspeed_config,
        micro_batch=cfg.data.batch_size,
        grad_clip=cfg.optim.grad_clip,
        use_gpu=cfg.distributed.use_gpu,
    )
    ds = build_engine(comps.method, comps.model.cls, comps.model.seg, cfg.optim, ds_cfg)
    engine = DeepSpeedEngine(ds, device, rank)
    seed_everything(rank_seed(cfg.seed, rank))
    checkpoints = RayCheckpoints(
        engine, cfg, comps.data.classes, rank, world, config.get("resume_from")
    )
    fault = config.get("fault")
    stop = config.get("stop_after")
    run_loop(
        comps,
        engine,
        checkpoints,
        rank=rank,
        stop_after=None if stop is None else int(stop),
        report=bool(config.get("report", True)),
        before_step=lambda step: maybe_fail(fault, rank, step),
    )
    if dist.is_initialized():
        dist.barrier()
