"""The experiment matrix: label budgets x seeds x variants, trained on shared saved splits.

Layout of an experiment folder ``out``::

    out/splits/labeled{B}_seed{S}.json          one split per (budget, seed), written once
    out/runs/labeled{B}/seed{S}/{variant}/      the trainer's out_dir of one run
        result.json                             final metrics + config, written atomically
        test_predictions.csv                    the final evaluation per test image (the input
                                                of ``python -m hermes.compare``)
    out/results.md, out/results.png, out/summary.json   (see :mod:`hermes.experiments.tables`)
    out/gains_per_image.json                    each seed's and the pooled per-image comparison
                                                against supervised-only

A run whose ``result.json`` exists with the same configuration (:func:`same_config`) is skipped, so rerunning the
command only trains what is missing; an interrupted run continues from its ``last.pt`` when the
checkpoint was made with the same configuration. Every variant of a (budget, seed) pair loads the
same split file, so the comparisons are paired.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hermes.experiments.variants import Variant
from hermes.train.config import TrainConfig, load_config, to_dict, upgrade_stored

logger = logging.getLogger(__name__)

RESULT_FORMAT = 1


@dataclass(frozen=True)
class RunSpec:
    """One cell of the matrix: a variant trained with a label budget and a seed."""

    variant: Variant
    budget: int
    seed: int

    @property
    def key(self) -> str:
        return f"labeled{self.budget}/seed{self.seed}/{self.variant.name}"


@dataclass
class Matrix:
    """What to train.

    Attributes:
        out: the experiment folder.
        budgets: label budgets (labeled images per run, split evenly between the classes).
        seeds: seeds; each gives its own split, initial weights and data order.
        variants: the rows (see :data:`hermes.experiments.variants.VARIANTS`).
        preset: trainer preset name or YAML path (the base configuration).
        overrides: ``key=value`` strings or ``(key, value)`` pairs applied to the preset before
            the per-run fields (seed, budget, split file, out_dir) and the variant's overrides.
    """

    out: Path
    budgets: list[int]
    seeds: list[int]
    variants: list[Variant]
    preset: str = "default"
    overrides: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.budgets or not self.seeds or not self.variants:
            raise ValueError(
                f"the matrix needs at least one budget, seed and variant, got budgets="
                f"{self.budgets}, seeds={self.seeds}, variants={[v.name for v in self.variants]}"
            )
        for b in self.budgets:
            if isinstance(b, bool) or not isinstance(b, int) or b < 2:
                raise ValueError(f"--budgets: expected label counts (ints >= 2), got {b!r}")

    def specs(self) -> list[RunSpec]:
        """All runs, seed-major (a finished seed is a complete, paired set of rows)."""
        return [RunSpec(v, b, s) for s in self.seeds for b in self.budgets for v in self.variants]


# ---------------------------------------------------------------------------- paths
def split_path(out: Path, budget: int, seed: int) -> Path:
    return Path(out) / "splits" / f"labeled{budget}_seed{seed}.json"


def run_dir(out: Path, spec: RunSpec) -> Path:
    return Path(out) / "runs" / spec.key


def result_path(out: Path, spec: RunSpec) -> Path:
    return run_dir(out, spec) / "result.json"


# ---------------------------------------------------------------------------- configs
def run_config(matrix: Matrix, spec: RunSpec) -> TrainConfig:
    """The trainer configuration of one run: base preset + overrides + this cell's fields."""
    overrides: list[Any] = list(matrix.overrides)
    overrides += [
        ("seed", spec.seed),
        ("data.labeled", spec.budget),
        ("data.split_file", str(split_path(matrix.out, spec.budget, spec.seed))),
        ("out_dir", str(run_dir(matrix.out, spec))),
        ("name", f"{spec.variant.name}-l{spec.budget}-s{spec.seed}"),
        ("progress", False),
    ]
    overrides += list(spec.variant.overrides)
    return load_config(matrix.preset, overrides)


def fingerprint(cfg: TrainConfig) -> str:
    """A hash of the whole configuration (recorded with each result, for reference)."""
    text = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def same_config(stored: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a result's stored configuration is the configuration ``cfg``.

    Every field must have the same value, except fields that the stored configuration lacks
    (added to the code after the run) and that ``cfg`` leaves at their default: a switch added
    later, off by default, does not make finished runs stale. A field renamed since the run is
    read under its new name first (:func:`hermes.train.config.upgrade_stored`).
    """
    defaults = _plain(to_dict(TrainConfig()))
    current = _plain(to_dict(cfg))

    def same(old: dict[str, Any], new: dict[str, Any], default: Any) -> bool:
        for key, value in new.items():
            base = default.get(key) if isinstance(default, dict) else None
            if key not in old:
                if not isinstance(default, dict) or key not in default or value != base:
                    return False
            elif isinstance(value, dict) and isinstance(old[key], dict):
                if not same(old[key], value, base if isinstance(base, dict) else {}):
                    return False
            elif old[key] != value:
                return False
        return set(old) <= set(new)

    return same(_plain(upgrade_stored(stored)), current, defaults)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_split(cfg: TrainConfig) -> Path:
    """Write the split of ``cfg`` (seeded with ``cfg.seed``, budget ``cfg.data.labeled``) to
    ``cfg.data.split_file`` unless it exists. Returns the file. The phantom's content is fixed
    by ``data.seed``; only the split follows the run's seed."""
    from hermes.data import load_records, make_split

    if cfg.data.split_file is None:
        raise ValueError("data.split_file: expected a path for the experiment's split, got None")
    path = Path(cfg.data.split_file)
    if path.is_file():
        return path
    records, _ = load_records(cfg.data)
    distance = -1 if cfg.data.dataset == "phantom" else cfg.data.duplicate_distance
    split = make_split(records, cfg.data.labeled, cfg.data.test_fraction, cfg.seed, distance)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    split.save(tmp)
    os.replace(tmp, path)
    logger.info(
        "split %s: %d labeled, %d unlabeled, %d test",
        path,
        len(split.labeled),
        len(split.unlabeled),
        len(split.test),
    )
    return path


def load_result(path: Path) -> dict[str, Any] | None:
    """A run's result, or ``None`` when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(matrix: Matrix, spec: RunSpec) -> bool:
    """Whether ``spec`` has a result made with its current configuration."""
    result = load_result(result_path(matrix.out, spec))
    return result is not None and same_config(result.get("config", {}), run_config(matrix, spec))


# ---------------------------------------------------------------------------- one run
def _nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def history_summary(history: list[dict[str, float]], tail: float = 0.25) -> dict[str, float]:
    """Mean of every logged value over the last ``tail`` of the steps (NaNs ignored): the
    pseudo-label statistics and loss balance at the end of training."""
    if not history:
        return {}
    rows = history[-max(1, int(round(len(history) * tail))) :]
    keys = sorted({k for row in rows for k in row if k != "step"})
    return {k: _nanmean(row.get(k, math.nan) for row in rows) for k in keys}


def _resume_point(cfg: TrainConfig) -> Path | None:
    """``last.pt`` of an interrupted run with the same configuration, else ``None``."""
    from hermes.train.checkpoint import load_checkpoint

    last = Path(cfg.out_dir) / "last.pt"
    if not last.is_file():
        return None
    try:
        ckpt = load_checkpoint(last)
    except Exception as exc:  # a torn or foreign file: start over
        logger.warning("ignoring %s (%s)", last, exc)
        return None
    if ckpt.get("config") != to_dict(cfg):
        logger.info("ignoring %s: made with another configuration", last)
        return None
    return last


def execute(matrix: Matrix, spec: RunSpec) -> dict[str, Any]:
    """Train one run in this process (unless done) and write its ``result.json``.

    Returns the result (read back when the run was already done).
    """
    from hermes.eval.paired import PREDICTIONS_FILE, write_per_image
    from hermes.train.loop import train

    cfg = run_config(matrix, spec)
    key = fingerprint(cfg)
    path = result_path(matrix.out, spec)
    previous = load_result(path)
    if previous is not None and same_config(previous.get("config", {}), cfg):
        logger.info("%s: done, skipped", spec.key)
        return previous
    ensure_split(cfg)
    resume = _resume_point(cfg)
    logger.info(
        "%s: training (%d steps)%s",
        spec.key,
        cfg.optim.steps,
        f", resuming {resume}" if resume else "",
    )
    start = time.perf_counter()
    run = train(cfg, resume=resume, report=False, overwrite=True)  # a stale run is replaced
    seconds = time.perf_counter() - start
    history_file = Path(cfg.out_dir) / "history.json"
    atomic_write_text(history_file, json.dumps(run.state.history))
    if run.final is not None and run.final.per_image is not None:
        write_per_image(Path(cfg.out_dir) / PREDICTIONS_FILE, run.final.per_image)
    split_file = Path(cfg.data.split_file or "")
    result = {
        "format": RESULT_FORMAT,
        "variant": spec.variant.name,
        "budget": spec.budget,
        "seed": spec.seed,
        "fingerprint": key,
        "metrics": run.metrics,
        "seconds": seconds,
        "steps": run.state.step,
        "split_file": str(split_file),
        "split_sha256": hashlib.sha256(split_file.read_bytes()).hexdigest(),
        "end_of_training": history_summary(run.state.history),
        "config": to_dict(cfg),
    }
    atomic_write_text(path, json.dumps(result, indent=1, default=str) + "\n")
    logger.info(
        "%s: dice_lesion=%.4f accuracy=%.4f in %.0f s",
        spec.key,
        run.metrics.get("dice_lesion", math.nan),
        run.metrics.get("accuracy", math.nan),
        seconds,
    )
    return result


def _worker_init() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def run_matrix(
    matrix: Matrix,
    workers: int = 1,
    on_result: Callable[[RunSpec, dict[str, Any]], None] | None = None,
) -> dict[RunSpec, dict[str, Any]]:
    """Train every run of ``matrix`` that is not done yet.

    Splits are written first (one per budget and seed, shared by the variants). With
    ``workers > 1`` runs go to that many spawned processes (each with the configuration's own
    thread count); otherwise they run here, one after the other.

    Returns the results of every run of the matrix, the skipped ones included.
    """
    specs = matrix.specs()
    for budget in matrix.budgets:
        for seed in matrix.seeds:
            ensure_split(run_config(matrix, RunSpec(matrix.variants[0], budget, seed)))
    todo = [s for s in specs if not is_done(matrix, s)]
    logger.info(
        "%d runs in the matrix, %d done, %d to train", len(specs), len(specs) - len(todo), len(todo)
    )
    results: dict[RunSpec, dict[str, Any]] = {}
    if workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = {s: pool.submit(execute, matrix, s) for s in todo}
            for spec, future in futures.items():
                results[spec] = future.result()
                if on_result is not None:
                    on_result(spec, results[spec])
    else:
        for spec in todo:
            results[spec] = execute(matrix, spec)
            if on_result is not None:
                on_result(spec, results[spec])
    for spec in specs:
        if spec not in results:
            loaded = load_result(result_path(matrix.out, spec))
            if loaded is not None:
                results[spec] = loaded
    return results
