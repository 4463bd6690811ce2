"""The single-process training loop: steps, logging, evaluation, checkpoints, report.

The pieces are functions the distributed trainer can reuse: :func:`save_checkpoint`,
:func:`restore`, :func:`logs_to_floats`, :func:`run_evaluation` and
:func:`hermes.train.report.write_run_report`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hermes.comm import Comm
from hermes.eval.evaluate import Evaluation, evaluate, format_metrics
from hermes.train.build import Components, build_everything, resolve_device
from hermes.train.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from hermes.train.config import TrainConfig, save_config, to_dict
from hermes.train.interrupt import Interrupted, stop_requests
from hermes.train.optim import group_lrs
from hermes.train.preflight import check_backend, check_out_dir
from hermes.train.report import write_run_report
from hermes.train.state import RunResult, TrainState
from hermes.train.step import autocast_context, to_device, train_step
from hermes.train.stream import BatchStream

logger = logging.getLogger(__name__)


def logs_to_floats(logs: dict[str, Tensor]) -> dict[str, float]:
    """Bring a step's logged tensors to the host in one transfer per device."""
    by_device: dict[torch.device, list[str]] = {}
    for key, value in logs.items():
        by_device.setdefault(value.device, []).append(key)
    out: dict[str, float] = {}
    for _device, keys in by_device.items():
        values = torch.stack([logs[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, values, strict=False))
    return out


def make_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast on a GPU; ``None`` for bf16, fp32 or the CPU."""
    _, dtype = autocast_context(device, cfg.amp)
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def checkpoint_state(
    comps: Components,
    streams: dict[str, BatchStream],
    state: TrainState,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, Any]:
    """Everything needed to resume exactly (see :mod:`hermes.train.checkpoint`)."""
    return {
        "format": FORMAT_VERSION,
        "config": to_dict(comps.cfg),
        "step": state.step,
        "method": comps.method.state_dict(),
        "optimizers": [o.state_dict() for o in comps.optimizers],
        "schedulers": [s.state_dict() for s in comps.schedulers],
        "scaler": scaler.state_dict() if scaler is not None else None,
        "streams": {k: s.state_dict() for k, s in streams.items()},
        "rng": rng_state(),
        "history": state.history,
        "evals": state.evals,
        "best": state.best,
        "classes": list(comps.data.classes),
    }


def save_checkpoint(
    path: str | Path,
    comps: Components,
    streams: dict[str, BatchStream],
    state: TrainState,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write a resumable checkpoint atomically. Returns the path."""
    atomic_save(checkpoint_state(comps, streams, state, scaler), path)
    return Path(path)


def restore(
    ckpt: dict[str, Any],
    comps: Components,
    streams: dict[str, BatchStream],
    scaler: torch.amp.GradScaler | None = None,
) -> TrainState:
    """Load a checkpoint into freshly built components; the RNG states are restored last
    (repositioning the streams draws augmentations). Returns the run's state."""
    comps.method.load_state_dict(ckpt["method"])
    for opt, sd in zip(comps.optimizers, ckpt["optimizers"], strict=True):
        opt.load_state_dict(sd)
    for sched, sd in zip(comps.schedulers, ckpt["schedulers"], strict=True):
        sched.load_state_dict(sd)
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    for name, stream in streams.items():
        stream.load_state_dict(ckpt["streams"][name])
    set_rng_state(ckpt["rng"])
    return TrainState(
        step=int(ckpt["step"]),
        history=list(ckpt["history"]),
        evals=list(ckpt["evals"]),
        best=ckpt["best"],
    )


def run_evaluation(comps: Components, keep_images: int = 0) -> Evaluation:
    """Evaluate the networks on the test split (RNG untouched)."""
    cfg = comps.cfg
    return evaluate(
        comps.model,
        comps.data.test,
        comps.device,
        max_batches=cfg.eval.max_batches,
        keep_images=keep_images,
    )


def _is_better(value: float, best: dict[str, float] | None, key: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or math.isnan(best.get(key, math.nan)) or value > best[key]


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    comm: Comm | None = None,
    report: bool = True,
    overwrite: bool = False,
) -> RunResult:
    """Train ``cfg`` (optionally resuming a checkpoint) and write checkpoints and the report.

    Args:
        cfg: the configuration (``cfg.out_dir`` receives ``config.yaml``, ``last.pt``,
            ``best.pt``, ``tensorboard/`` and ``report/``).
        resume: a checkpoint to continue from (its step, RNG and data position).
        stop_after: stop once this many steps are done (a checkpoint is written), as if the
            run had been interrupted there; the schedule still spans ``cfg.optim.steps``.
        comm: collectives (single process: ``None``).
        report: write the report folder at the end.
        overwrite: replace a run that ``cfg.out_dir`` already holds. Without it such a folder
            is an error, unless ``resume`` is one of its own checkpoints (see
            :func:`hermes.train.preflight.check_out_dir`).

    Raises:
        ValueError: ``cfg.out_dir`` holds another run, or ``cfg.backend`` cannot run on the
            device; both before anything is built.
        Interrupted: on Ctrl-C (SIGINT), after the current step and a checkpoint at it
            (``last.pt``); resume from that checkpoint to continue exactly.
    """
    import time

    from torch.utils.tensorboard import SummaryWriter

    start = time.perf_counter()
    out = Path(cfg.out_dir)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    check_backend(cfg.backend, resolve_device(cfg.device))
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    comps = build_everything(cfg, comm)
    streams = {
        "labeled": BatchStream(comps.data.labeled, cfg.seed, "labeled"),
        "unlabeled": BatchStream(comps.data.unlabeled, cfg.seed, "unlabeled"),
    }
    scaler = make_scaler(cfg, comps.device)
    state = TrainState()
    if resume is not None:
        state = restore(load_checkpoint(resume), comps, streams, scaler)
        logger.info("resumed from %s at step %d", resume, state.step)

    total = cfg.optim.steps
    end = total if stop_after is None else min(stop_after, total)
    last = out / "last.pt"
    supervised = cfg.method.mode == "supervised"
    writer = SummaryWriter(str(out / "tensorboard"))
    bar = tqdm(
        total=total, initial=state.step, desc=cfg.name, disable=not cfg.progress, dynamic_ncols=True
    )
    comps.method.train()
    final: Evaluation | None = None
    # log lines go through tqdm, so that they never cut the progress bar
    redirect = logging_redirect_tqdm() if cfg.progress else contextlib.nullcontext()
    with stop_requests() as stop, redirect:  # Ctrl-C: finish the step, then leave the loop
        try:
            while state.step < end and not stop.requested:
                step = state.step
                labeled = to_device(next(streams["labeled"]), comps.device)
                unlabeled = (
                    None if supervised else to_device(next(streams["unlabeled"]), comps.device)
                )
                logs = train_step(
                    comps.method,
                    comps.optimizers,
                    comps.schedulers,
                    labeled,
                    unlabeled,
                    step,
                    total,
                    amp=cfg.amp,
                    scaler=scaler,
                    grad_clip=cfg.optim.grad_clip,
                )
                state.step = step + 1
                if step % cfg.log_every == 0 or state.step == total:
                    values = logs_to_floats(logs)
                    values.update(group_lrs([g for o in comps.optimizers for g in o.param_groups]))
                    for key, value in values.items():
                        writer.add_scalar(key, value, step)
                    state.history.append({"step": float(step), **values})
                    bar.set_postfix(loss=f"{values['loss/total']:.3f}", refresh=False)
                bar.update(1)
                is_final = state.step == total
                if (cfg.eval.every and state.step % cfg.eval.every == 0) or is_final:
                    ev = run_evaluation(
                        comps, keep_images=cfg.eval.figure_images if is_final else 0
                    )
                    if is_final:
                        final = ev
                    record = {"step": float(state.step), **ev.metrics}
                    state.evals.append(record)
                    for key, value in ev.metrics.items():
                        writer.add_scalar(f"test/{key}", value, state.step)
                    logger.info("step %d: %s", state.step, format_metrics(ev.metrics))
                    key = cfg.eval.best_metric  # a metric name (checked by EvalConfig)
                    if _is_better(ev.metrics[key], state.best, key):
                        state.best = record
                        save_checkpoint(out / "best.pt", comps, streams, state, scaler)
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    save_checkpoint(last, comps, streams, state, scaler)
        finally:
            bar.close()
            writer.close()
    save_checkpoint(last, comps, streams, state, scaler)
    if state.step < end:  # stopped by Ctrl-C
        logger.warning("interrupted at step %d of %d: checkpoint %s", state.step, total, last)
        raise Interrupted(last, state.step, total)

    if state.step == total and final is None:  # resumed from a finished run
        final = run_evaluation(comps, keep_images=cfg.eval.figure_images)
    result = RunResult(cfg, out, state, final, last, time.perf_counter() - start)
    if report and final is not None:
        write_run_report(result, comps.data.classes)
    return result
