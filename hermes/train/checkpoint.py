"""Atomic checkpoints that resume exactly, and loading a model back from one.

A checkpoint holds the method (networks and memory bank), both optimisers and schedulers, the
loss scaler, the step, the data streams' positions, the RNG states of torch (CPU and CUDA),
numpy and ``random``, the configuration, and the history of logged values and evaluations (so
that the report of a resumed run is complete).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the trainer; a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the same user error
        raise ValueError(
            f"checkpoint {path}: cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path}: not a Hermes training checkpoint (format {FORMAT_VERSION} expected)"
        )
    return ckpt


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The networks' state dict inside a checkpoint (the method's ``model.`` entries)."""
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in ckpt["method"].items() if k.startswith(prefix)}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Rebuild the networks of a checkpoint in eval mode. Returns ``(model, TrainConfig)``."""
    from hermes.models import build_model
    from hermes.train.config import TrainConfig, from_dict

    ckpt = load_checkpoint(path)
    cfg = from_dict(TrainConfig, ckpt["config"])
    model = build_model(cfg.model, load_weights=False)  # the checkpoint holds the weights
    model.load_state_dict(model_state(ckpt))
    return model.to(device).eval(), cfg
