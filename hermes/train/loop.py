"""The training loop, written once for every engine: steps, logging, periodic evaluation and
``best.pt``, checkpoints, the final evaluation and the report.

:func:`run_loop` drives an :class:`~hermes.train.engine.Engine` and saves through a
:class:`~hermes.train.checkpoint.Checkpoints`. :func:`train` is the single-process run
(:class:`~hermes.train.engine.LocalEngine`, ``last.pt`` and ``best.pt`` files); each Ray worker
of a distributed run calls :func:`run_loop` with the DeepSpeed engine and Ray checkpoints
(:mod:`hermes.train.distributed.worker`).

In every process, after each step:

- every ``log_every`` steps (and at the last): the logs and the learning rates join the history;
- every ``eval.every`` steps (and at the last): the networks are evaluated on the test split;
  when ``eval.best_metric`` improves, ``best.pt`` is written;
- every ``checkpoint_every`` steps, and where the run stops: the resumable checkpoint.

Only the main process (the single process, or rank 0) writes ``config.yaml``, TensorBoard,
the log lines and the report; which process writes which checkpoint file is the
:class:`~hermes.train.checkpoint.Checkpoints`' decision.

RNG: the loop never seeds. It starts from the RNG state its caller left
(:func:`~hermes.train.build.build_everything` seeds with ``cfg.seed``; a Ray worker then seeds
from ``(seed, rank)``). Every checkpoint holds the RNG states of each process (torch CPU and
CUDA, numpy, ``random``), and a resume restores them after repositioning the data streams, so a
resumed run draws what the uninterrupted run drew: on the CPU the losses and weights are
bit-identical. Evaluation leaves the RNG untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hermes.comm import Comm
from hermes.eval.evaluate import Evaluation, evaluate, format_metrics
from hermes.train.build import Components, build_everything, resolve_device
from hermes.train.checkpoint import Checkpoints, FileCheckpoints, rng_state, set_rng_state
from hermes.train.config import TrainConfig, save_config
from hermes.train.engine import Engine, LocalEngine
from hermes.train.interrupt import Interrupted, stop_requests
from hermes.train.preflight import check_backend, check_out_dir
from hermes.train.report import write_run_report
from hermes.train.state import RunResult, TrainState
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


def run_evaluation(comps: Components, keep_images: int = 0) -> Evaluation:
    """Evaluate the networks on the test split (RNG untouched), with per-image results."""
    cfg = comps.cfg
    return evaluate(
        comps.model,
        comps.data.test,
        comps.device,
        max_batches=cfg.eval.max_batches,
        keep_images=keep_images,
        tta=cfg.eval.tta,
        classes=comps.data.classes,
    )


def make_streams(comps: Components, rank: int | None = None) -> dict[str, BatchStream]:
    """The labeled and unlabeled batch streams; a distributed run's are named by rank, so that
    each rank draws its own order."""
    suffix = "" if rank is None else f"/rank{rank}"
    return {
        name: BatchStream(getattr(comps.data, name), comps.cfg.seed, f"{name}{suffix}")
        for name in ("labeled", "unlabeled")
    }


def _is_better(value: float, best: dict[str, float] | None, key: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or math.isnan(best.get(key, math.nan)) or value > best[key]


def _run_entries(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "history": state.history, "evals": state.evals, "best": state.best}


def _own_entries(streams: dict[str, BatchStream]) -> dict[str, Any]:
    return {"streams": {k: s.state_dict() for k, s in streams.items()}, "rng": rng_state()}


def run_loop(
    comps: Components,
    engine: Engine,
    checkpoints: Checkpoints,
    *,
    rank: int | None = None,
    stop_after: int | None = None,
    report: bool = True,
    before_step: Callable[[int], None] | None = None,
    started: float | None = None,
) -> RunResult:
    """Train ``comps`` with ``engine`` from where ``checkpoints`` says, to ``optim.steps``.

    Args:
        comps: the run's data, networks, method and configuration (``comps.cfg.out_dir``
            receives ``config.yaml``, ``tensorboard/`` and ``report/``).
        engine: takes the steps (its networks are ``comps.model``).
        checkpoints: where the run resumes from and saves to.
        rank: this process's rank in a distributed run (``None``: the single process); only
            the main process (``None`` or 0) writes files and log lines.
        stop_after: stop once this many steps are done (a checkpoint is written), as if the
            run had been interrupted there; the schedule still spans ``optim.steps``.
        report: write the report folder at the end.
        before_step: called with each step's index before it runs.
        started: ``time.perf_counter()`` when the run started (for the report's duration).

    Raises:
        Interrupted: on Ctrl-C (SIGINT), after the current step and a checkpoint at it.
    """
    started = time.perf_counter() if started is None else started
    cfg = comps.cfg
    main = rank is None or rank == 0
    out = Path(cfg.out_dir)
    streams = make_streams(comps, rank)
    state = TrainState()
    restored = checkpoints.restore()
    if restored is not None:
        for name, stream in streams.items():
            stream.load_state_dict(restored["streams"][name])
        set_rng_state(restored["rng"])  # last: repositioning the streams drew augmentations
        state = TrainState(
            step=int(restored["step"]),
            history=list(restored["history"]),
            evals=list(restored["evals"]),
            best=restored["best"],
        )
        logger.info("resumed at step %d", state.step)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    from torch.utils.tensorboard import SummaryWriter

    total = cfg.optim.steps
    end = total if stop_after is None else min(stop_after, total)
    supervised = cfg.method.mode == "supervised"
    writer = SummaryWriter(str(out / "tensorboard")) if main else None
    show_bar = main and cfg.progress
    bar = tqdm(
        total=total, initial=state.step, desc=cfg.name, disable=not show_bar, dynamic_ncols=True
    )
    line_every = max(cfg.log_every, total // 20)  # without a bar: about 20 progress lines
    first, t0 = state.step, time.perf_counter()
    values: dict[str, float] = {}
    final: Evaluation | None = None
    saved_at: int | None = None
    comps.method.train()

    def evaluate_now(is_final: bool) -> Evaluation:
        keep = cfg.eval.figure_images if is_final and main else 0
        ev = engine.evaluate(lambda: run_evaluation(comps, keep_images=keep))
        record = {"step": float(state.step), **ev.metrics}
        state.evals.append(record)
        if writer is not None:
            for key, value in ev.metrics.items():
                writer.add_scalar(f"test/{key}", value, state.step)
            logger.info("step %d: %s", state.step, format_metrics(ev.metrics))
        key = cfg.eval.best_metric  # a metric name (checked by EvalConfig)
        if _is_better(ev.metrics[key], state.best, key):
            state.best = record
            checkpoints.save_best(_run_entries(state), _own_entries(streams))
        return ev

    # log lines go through tqdm, so that they never cut the progress bar
    redirect = logging_redirect_tqdm() if show_bar else contextlib.nullcontext()
    with stop_requests() as stop, redirect:  # Ctrl-C: finish the step, then leave the loop
        try:
            while state.step < end and not stop.requested:
                step = state.step
                if before_step is not None:
                    before_step(step)
                labeled = next(streams["labeled"])
                unlabeled = None if supervised else next(streams["unlabeled"])
                logs = engine.step(labeled, unlabeled, step, total)
                state.step = step + 1
                logged = step % cfg.log_every == 0 or state.step == total
                if logged:
                    values = logs_to_floats(logs)
                    values.update(engine.lrs())
                    state.history.append({"step": float(step), **values})
                    if writer is not None:
                        for key, value in values.items():
                            writer.add_scalar(key, value, step)
                    bar.set_postfix(loss=f"{values['loss/total']:.3f}", refresh=False)
                bar.update(1)
                if main and not show_bar and (state.step % line_every == 0 or state.step == end):
                    logger.info(
                        "step %d/%d loss %.4f (%.2f steps/s)",
                        state.step,
                        total,
                        values.get("loss/total", math.nan),
                        (state.step - first) / (time.perf_counter() - t0),
                    )
                is_final = state.step == total
                if (cfg.eval.every and state.step % cfg.eval.every == 0) or is_final:
                    ev = evaluate_now(is_final)
                    final = ev if is_final else final
                every = cfg.checkpoint_every
                if (every and state.step % every == 0) or state.step == end:
                    checkpoints.save(_run_entries(state), _own_entries(streams), values)
                    saved_at = state.step
                elif logged:
                    checkpoints.logged(state.step, values)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    if saved_at != state.step:  # stopped by Ctrl-C, or resumed at the end
        checkpoints.save(_run_entries(state), _own_entries(streams), values)
    if state.step < end:
        logger.warning(
            "interrupted at step %d of %d: checkpoint %s", state.step, total, checkpoints.last
        )
        raise Interrupted(checkpoints.last, state.step, total)

    if state.step == total and final is None:  # resumed from a finished run
        keep = cfg.eval.figure_images if main else 0
        final = engine.evaluate(lambda: run_evaluation(comps, keep_images=keep))
    result = RunResult(cfg, out, state, final, checkpoints.last, time.perf_counter() - started)
    if main and report and final is not None:
        write_run_report(result, comps.data.classes)
    return result


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    comm: Comm | None = None,
    report: bool = True,
    overwrite: bool = False,
) -> RunResult:
    """Train ``cfg`` in this process (optionally resuming a checkpoint) and write checkpoints
    and the report.

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
    started = time.perf_counter()
    check_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite)
    check_backend(cfg.backend, resolve_device(cfg.device))
    comps = build_everything(cfg, comm)
    engine = LocalEngine(comps)
    checkpoints = FileCheckpoints(cfg.out_dir, cfg, comps.data.classes, engine, resume)
    if resume is not None:
        logger.info("resuming from %s", resume)
    return run_loop(
        comps, engine, checkpoints, stop_after=stop_after, report=report, started=started
    )
