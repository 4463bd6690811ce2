"""Loading encoder weights from a local state dict file (nothing is ever downloaded)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# Keys of an ImageNet classifier that an encoder does not have (timm and torchvision names).
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "global_pool.")
_WRAPPERS = ("state_dict", "model", "module")


def read_state_dict(path: str | os.PathLike[str], *, what: str) -> dict[str, Tensor]:
    """Read a state dict saved with ``torch.save`` (tensors only, ``weights_only=True``).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and a ``module.`` prefix.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file does not hold a mapping of names to tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what}: pretrained weights file not found: {file}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike
        raise ValueError(f"{what}: cannot read a state dict from {file}: {err}") from err
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise ValueError(
            f"{what}: expected a non-empty mapping of parameter names to tensors in {file}, "
            f"got {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike[str], *, what: str) -> None:
    """Load a timm/torchvision backbone state dict into ``encoder``, strictly.

    Classifier keys the encoder does not have (``fc.*`` and the like) are dropped; every other
    key must match the encoder by name and shape. Missing ``num_batches_tracked`` buffers are
    tolerated (older checkpoints lack them).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, or keys/shapes that do not match, naming ``path``.
    """
    state = read_state_dict(path, what=what)
    own = encoder.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(HEAD_PREFIXES)}
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{what}: the state dict in {path} does not match the encoder: "
            f"{len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatch(es) {mismatched[:5]}"
        )
    for key in own.keys() - state.keys():  # only num_batches_tracked remain
        state[key] = own[key]
    encoder.load_state_dict(state, strict=True)
    logger.info("%s: loaded %d tensors from %s", what, len(state), path)
