"""Atomic checkpoints that resume exactly, where a run's checkpoints go, and loading a model
back from one.

A checkpoint holds the method (networks and memory bank), both optimisers and schedulers, the
loss scaler, the step, the data streams' positions, the RNG states of torch (CPU and CUDA),
numpy and ``random``, the configuration, and the history of logged values and evaluations (so
that the report of a resumed run is complete).

:class:`Checkpoints` is what the training loop (:func:`hermes.train.loop.run_loop`) saves
through and resumes from; :class:`FileCheckpoints` writes ``last.pt`` and ``best.pt`` for one
process, :class:`hermes.train.distributed.worker.RayCheckpoints` writes DeepSpeed checkpoints
into Ray's. The loop hands over two parts: the run's entries (``step``, ``evals``, ``best``:
the same in every process; ``history``: the logged values, of which a distributed checkpoint
keeps rank 0's) and the process's own (``streams``: the data positions; ``rng``: the RNG
states, restored after the streams are repositioned).

Only tensors and plain Python values (dicts, lists, tuples, numbers, strings, ``None``) go in,
so every checkpoint loads with ``torch.load(path, weights_only=True)``; numpy's RNG state is
stored as a dict with its key as an int64 tensor. Checkpoints written before that change hold a
numpy array there: :func:`load_checkpoint` reads them too, allowing numpy's array
reconstruction and nothing else.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from hermes.train.config import TrainConfig
    from hermes.train.engine import LocalEngine

FORMAT_VERSION = 1


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# What a numpy array inside a checkpoint written before the RNG state became plain needs.
_NUMPY_ARRAY_GLOBALS = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


def numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as plain values: ``{"bit_generator": str, "key": (624,) int64
    tensor, "pos": int, "has_gauss": int, "cached_gaussian": float}``."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "bit_generator": str(name),
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_numpy_rng_state(state: dict[str, Any] | tuple) -> None:
    """Restore :func:`numpy_rng_state` (or numpy's own tuple, as older checkpoints hold)."""
    if isinstance(state, dict):
        key = np.asarray(state["key"].numpy(), dtype=np.uint32)
        state = (
            state["bit_generator"],
            key,
            state["pos"],
            state["has_gauss"],
            state["cached_gaussian"],
        )
    np.random.set_state(state)


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from (tensors and plain values only)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_rng_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the trainer with ``torch.load(weights_only=True)``; a clear
    error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):  # older checkpoints
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the same user error
        raise ValueError(
            f"checkpoint {path}: cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path}: not a Hermes training checkpoint (format {FORMAT_VERSION} expected)"
        )
    return ckpt


def checkpoint_dict(cfg: TrainConfig, classes: Sequence[str], **entries: Any) -> dict[str, Any]:
    """A checkpoint: ``format``, ``config`` and ``classes``, then ``entries`` (the engine's,
    the run's and the process's; see the module docstring)."""
    from hermes.train.config import to_dict

    return {"format": FORMAT_VERSION, "config": to_dict(cfg), "classes": list(classes), **entries}


class Checkpoints:
    """Where a run's checkpoints go, and the state a resumed run starts from.

    ``last`` is where the run's resumable checkpoint lies (a file or a folder). The methods are
    called in every process of a run, at the same steps: an implementation decides which
    process writes what.
    """

    last: Path

    def restore(self) -> dict[str, Any] | None:
        """Load the engine's state from the checkpoint the run continues and return the
        checkpoint's run and process entries; ``None`` for a new run."""
        raise NotImplementedError

    def save(self, run: dict[str, Any], own: dict[str, Any], metrics: dict[str, float]) -> None:
        """Write the resumable checkpoint at ``run["step"]``. ``metrics``: the latest logged
        values (for a caller that reports them with the checkpoint)."""
        raise NotImplementedError

    def save_best(self, run: dict[str, Any], own: dict[str, Any]) -> None:
        """Write ``best.pt``, the checkpoint at the best evaluation so far."""
        raise NotImplementedError

    def logged(self, step: int, metrics: dict[str, float]) -> None:
        """The values logged at a step (``step`` steps done) at which no checkpoint is written
        (nothing by default)."""


class FileCheckpoints(Checkpoints):
    """``last.pt`` and ``best.pt`` in ``out_dir``, each a whole checkpoint of one process.

    Args:
        out_dir: the run's folder.
        cfg: the run's configuration (stored in every checkpoint).
        classes: the data's class names.
        engine: the engine whose state is saved and restored.
        resume: the checkpoint the run continues (``None``: a new run).
    """

    def __init__(
        self,
        out_dir: str | Path,
        cfg: TrainConfig,
        classes: Sequence[str],
        engine: LocalEngine,
        resume: str | Path | None = None,
    ) -> None:
        self.out, self.cfg, self.classes = Path(out_dir), cfg, list(classes)
        self.engine, self.resume = engine, resume
        self.last = self.out / "last.pt"

    def restore(self) -> dict[str, Any] | None:
        if self.resume is None:
            return None
        ckpt = load_checkpoint(self.resume)
        self.engine.load_state_dict(ckpt)
        return ckpt

    def _write(self, path: Path, run: dict[str, Any], own: dict[str, Any]) -> None:
        state = self.engine.state_dict()
        atomic_save(checkpoint_dict(self.cfg, self.classes, **state, **run, **own), path)

    def save(self, run: dict[str, Any], own: dict[str, Any], metrics: dict[str, float]) -> None:
        self._write(self.last, run, own)

    def save_best(self, run: dict[str, Any], own: dict[str, Any]) -> None:
        self._write(self.out / "best.pt", run, own)


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The networks' state dict inside a checkpoint (the method's ``model.`` entries)."""
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in ckpt["method"].items() if k.startswith(prefix)}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Rebuild the networks of a checkpoint in eval mode. Returns ``(model, TrainConfig)``."""
    from hermes.models import build_model
    from hermes.train.config import train_config_from_dict, upgrade_stored

    ckpt = load_checkpoint(path)
    cfg = train_config_from_dict(upgrade_stored(ckpt["config"]))
    model = build_model(cfg.model, load_weights=False)  # the checkpoint holds the weights
    model.load_state_dict(model_state(ckpt))
    return model.to(device).eval(), cfg
