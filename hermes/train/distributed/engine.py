"""The method module inside one DeepSpeed engine, and :class:`DeepSpeedEngine`, the
:class:`hermes.train.engine.Engine` that the training loop drives on each Ray worker.

- DeepSpeed config: a JSON file of ``hermes/configs/deepspeed/`` (ZeRO stage, bf16; installed with
  the package), completed here
  with what the run decides (micro-batch size, gradient clipping, the composite optimiser).
- Process group: initialised by the caller (Ray's ``TorchTrainer`` does it with gloo on CPUs,
  NCCL on GPUs); DeepSpeed is told so (``dist_init_required=False``).
- DeepSpeed's shared-memory all-reduce op (``deepspeed_shm_comm``, a C++ op compiled on first
  use, 20-40 s per fresh machine) is *avoided*, not cached: it is marked unavailable before
  ``deepspeed.initialize``, so gradients go through gloo. It only exists for the CPU
  accelerator; on GPUs NCCL is used and nothing is compiled.
- Checkpoint: DeepSpeed's folder (module weights and the run's entries, written by rank 0; one
  optimiser partition per rank; the schedule) plus one file per rank with what differs between
  ranks: the data positions, the RNG states and the module's buffers (BatchNorm running
  statistics are per rank, and DeepSpeed would load rank 0's into every rank). Resuming
  restores all of it, so a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from hermes.eval.evaluate import Evaluation
from hermes.train.checkpoint import atomic_save, rng_state
from hermes.train.distributed.optim import BranchOptimizer
from hermes.train.optim import group_lrs, param_groups
from hermes.train.step import Batch

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"  # package data


def resolve_deepspeed_config(path: str | None) -> Path:
    """A DeepSpeed JSON path as given, or a bare name of ``hermes/configs/deepspeed/``; ``None``:
    ``zero1``, whose gradient reduction runs in a fixed parameter order after the backward pass.
    ZeRO-2/3 reduce in the order gradients become ready, which must then be the same on every
    rank (the same backward graph everywhere)."""
    if path is None:
        path = "zero1"
    p = Path(path)
    if not p.suffix and not p.exists():
        p = CONFIG_DIR / f"{path}.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"distributed.deepspeed_config: no DeepSpeed config at {p} "
            f"(give a JSON path or one of {sorted(x.stem for x in CONFIG_DIR.glob('*.json'))})"
        )
    return p


def load_deepspeed_config(
    path: str | None, *, micro_batch: int, grad_clip: float | None, use_gpu: bool
) -> dict[str, Any]:
    """Read a DeepSpeed JSON config and complete it for this run.

    Sets ``train_micro_batch_size_per_gpu`` (the per-worker labeled batch), ``gradient_clipping``
    (DeepSpeed's default is 1.0; the method does not clip unless ``optim.grad_clip`` says so),
    and allows the composite client optimiser under ZeRO. fp16 needs a GPU (the CPU
    accelerator has no fp16 kernels): asking for it on CPU workers is an error.
    """
    p = resolve_deepspeed_config(path)
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"DeepSpeed config {p}: not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"DeepSpeed config {p}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("fp16", {}).get("enabled") and not use_gpu:
        raise ValueError(
            f"DeepSpeed config {p}: fp16 needs GPU workers (distributed.use_gpu=true); "
            "use bf16 on CPUs"
        )
    if "optimizer" in cfg or "scheduler" in cfg:
        raise ValueError(
            f"DeepSpeed config {p}: must not define 'optimizer' or 'scheduler' (the method's "
            "SGD + Adam groups and poly schedule are passed to deepspeed.initialize)"
        )
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg.setdefault("gradient_accumulation_steps", 1)
    cfg.pop("train_batch_size", None)
    cfg["gradient_clipping"] = 0.0 if grad_clip is None else float(grad_clip)
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


def avoid_shm_build() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce op (see module docstring)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def check_method(method_cfg: Any, ds_config: dict[str, Any]) -> None:
    """Refuse a method the DeepSpeed config cannot run: an EMA teacher (Mean Teacher, or Hermes
    with ``method.teacher: ema``) reads the student's full weights at the start of each step,
    which ZeRO-3 keeps partitioned. ``method_cfg`` is a :class:`hermes.method.MethodConfig`."""
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if method_cfg.mode == "mean_teacher":
        what = "method.mode: 'mean_teacher'"
    elif method_cfg.mode == "hermes" and method_cfg.teacher == "ema":
        what = "method.teacher: 'ema'"
    else:
        return
    if stage == 3:
        raise ValueError(
            f"{what} runs under ZeRO stages 0-2, got a DeepSpeed config with stage 3 "
            "(distributed.deepspeed_config); use zero1 or zero2"
        )


def build_engine(
    method: nn.Module,
    cls_branch: nn.Module,
    seg_branch: nn.Module,
    optim_cfg: Any,
    ds_config: dict[str, Any],
) -> Any:
    """``deepspeed.initialize`` over the method with one :class:`BranchOptimizer` over
    :func:`hermes.train.optim.param_groups` (SGD or AdamW groups for ``cls_branch``, Adam
    groups for ``seg_branch``) and the poly schedule.

    ``optim_cfg`` is a :class:`hermes.train.config.OptimConfig`. The process group must exist.
    Returns the engine (its ``lr_scheduler`` steps with ``engine.step()``).
    """
    import deepspeed

    from hermes.method import poly_factor

    if not torch.distributed.is_initialized():
        raise ValueError("build_engine: torch.distributed must be initialised first")
    avoid_shm_build()
    groups = param_groups(cls_branch, seg_branch, optim_cfg)
    optimizer = BranchOptimizer(groups)
    scheduler = LambdaLR(optimizer, lambda t: poly_factor(t, optim_cfg.steps, optim_cfg.poly_power))
    engine, _, _, _ = deepspeed.initialize(
        model=method,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        dist_init_required=False,
    )
    logger.info(
        "DeepSpeed engine: ZeRO stage %d, dtype %s, %d workers",
        engine.zero_optimization_stage(),
        engine.get_data_types()[0],
        engine.dp_world_size,
    )
    return engine


def engine_dtype(engine: Any) -> torch.dtype:
    """The dtype the engine keeps the module's parameters in (bf16, fp16 or fp32)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def full_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The method's full state dict in fp32 on the CPU, on every rank.

    A collective under ZeRO-3 (parameters are gathered): call it on every rank. Under bf16 the
    weights are the engine's 16-bit module weights cast to fp32.
    """
    module = engine.module

    def copy() -> dict[str, torch.Tensor]:
        return {
            k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in module.state_dict().items()
        }

    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return copy()
    return copy()


def _cast(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    """The batch's tensors on ``device``, floating-point ones in ``dtype``."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


class DeepSpeedEngine:
    """One rank's step, learning rates, evaluation and checkpoint folder, over a DeepSpeed
    engine (see the module docstring for what a checkpoint holds).

    Args:
        engine: what :func:`build_engine` returned.
        device: this rank's device.
        rank: this rank (names its file in the checkpoint folder).
    """

    def __init__(self, engine: Any, device: torch.device, rank: int) -> None:
        self.engine, self.device, self.rank = engine, device, rank
        self.dtype = engine_dtype(engine)

    def step(
        self, labeled: Batch, unlabeled: Batch | None, step: int, total: int
    ) -> dict[str, Tensor]:
        labeled = _cast(labeled, self.device, self.dtype)
        unlabeled = None if unlabeled is None else _cast(unlabeled, self.device, self.dtype)
        loss, logs = self.engine(labeled, unlabeled, step=step, total_steps=total)
        self.engine.backward(loss)
        self.engine.step()
        return logs

    def lrs(self) -> dict[str, float]:
        return group_lrs(self.engine.optimizer.param_groups)

    def evaluate(self, run: Callable[[], Evaluation]) -> Evaluation:
        """Every rank evaluates with its full copy of the networks (under ZeRO-3 the forward
        pass gathers parameters, a collective), then takes rank 0's metrics: BatchNorm running
        statistics, which evaluation uses, differ between ranks, and rank 0's weights are the
        ones exported."""
        ev = run()
        keys = list(ev.metrics)
        values = torch.tensor([ev.metrics[k] for k in keys], dtype=torch.float64)
        values = values.to(self.device)
        dist.broadcast(values, src=0)
        ev.metrics = dict(zip(keys, values.cpu().tolist(), strict=True))
        return ev

    def weights(self) -> dict[str, Tensor]:
        """The method's full state dict in fp32 on the CPU (a collective under ZeRO-3)."""
        return full_state_dict(self.engine)

    def save(self, folder: Path, run: dict[str, Any], own: dict[str, Any]) -> None:
        """Write ``folder/deepspeed/step<N>/`` (every rank takes part; ``run`` is the client
        state) and ``folder/rank<r>.pt`` (``own`` and this rank's module buffers)."""
        self.engine.save_checkpoint(
            str(folder / "deepspeed"), tag=f"step{run['step']}", client_state=run
        )
        buffers = {k: v.detach().cpu().clone() for k, v in self.engine.module.named_buffers()}
        atomic_save({**own, "buffers": buffers}, folder / f"rank{self.rank}.pt")

    def load(self, folder: Path) -> dict[str, Any]:
        """Load what :meth:`save` wrote in ``folder``; returns the run's and this rank's
        entries. A checkpoint without rank files (written before they existed) resumes with
        rank 0's data positions and the current RNG state, not exactly."""
        path, client = self.engine.load_checkpoint(str(folder / "deepspeed"))
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {folder / 'deepspeed'}")
        mine = folder / f"rank{self.rank}.pt"
        if not mine.is_file():
            if any(folder.glob("rank*.pt")):
                raise FileNotFoundError(
                    f"checkpoint {folder}: no {mine.name}; it was written by fewer workers "
                    "than this run has (distributed.workers must stay the same)"
                )
            logger.warning("checkpoint %s has no per-rank RNG state: not an exact resume", folder)
            return {"best": None, **client, "rng": rng_state()}
        own = torch.load(mine, weights_only=True)
        with torch.no_grad():
            for name, buf in self.engine.module.named_buffers():
                buf.copy_(own["buffers"][name])
        return {**client, "streams": own["streams"], "rng": own["rng"]}
