"""Typed configuration of the two-branch Hermes network.

Three presets fill every field left at ``None``:

- ``paper``: segmentation encoder ``res2net101d`` (Res2Net-101 v1b 26w4s) with a U-Net decoder of
  widths (256, 128, 64, 32, 16); classification encoder ResNet-18; 224 px; both encoders with
  ImageNet weights (from timm's hub: on a machine without network access, pass local files or
  the model refuses to build, saying so).
- ``lite0``: EfficientNet-Lite0 in both branches with ImageNet weights that install from the
  package index (no network access needed), a U-Net decoder of widths (96, 48, 24, 16, 16);
  the CPU presets' networks.
- ``small``: segmentation encoder ResNet-18 at half width (32, 64, 128, 256) with a deep stem
  of width 16 (32 channels at 1/2) and a decoder of widths (64, 32, 16, 16, 16);
  classification ResNet-18 at the same widths and stem; 128 px; random initialisation.

Any timm model whose ``feature_info`` gives features at strides (2,) 4, 8, 16, 32 can be either
encoder (ResNet, Res2Net, EfficientNet(-Lite), ConvNeXt, ...). Fields given explicitly override
the preset; the ResNet-only arguments (widths, stem) follow the preset only together with its
encoder. The filled values are stored in the instance, so ``dataclasses.asdict(cfg)``
round-trips, but ``dataclasses.replace(cfg, preset=...)`` keeps the old preset's values: build a
new ``ModelConfig`` to change preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "seg_encoder": "res2net101d",
        "seg_widths": None,
        "seg_stem_width": None,
        "seg_stem_type": None,
        "decoder_channels": (256, 128, 64, 32, 16),
        "cls_encoder": "resnet18",
        "cls_widths": (64, 128, 256, 512),
        "cls_stem_width": 64,
        "cls_stem_type": "",
        "attention_init": "default",
        "pretrained_seg": "imagenet",
        "pretrained_cls": "imagenet",
    },
    "lite0": {
        "seg_encoder": "efficientnet_lite0",
        "seg_widths": None,
        "seg_stem_width": None,
        "seg_stem_type": None,
        "decoder_channels": (96, 48, 24, 16, 16),
        "cls_encoder": "efficientnet_lite0",
        "cls_widths": None,
        "cls_stem_width": None,
        "cls_stem_type": None,
        "attention_init": "identity",
        "pretrained_seg": "imagenet",
        "pretrained_cls": "imagenet",
    },
    "small": {
        "seg_encoder": "resnet18",
        "seg_widths": (32, 64, 128, 256),
        "seg_stem_width": 16,
        "seg_stem_type": "deep",
        "decoder_channels": (64, 32, 16, 16, 16),
        "cls_encoder": "resnet18",
        "cls_widths": (32, 64, 128, 256),
        "cls_stem_width": 16,
        "cls_stem_type": "deep",
        "attention_init": "default",
        "pretrained_seg": "none",
        "pretrained_cls": "none",
    },
}

ATTENTION_SOURCES = ("decoder", "encoder")
ATTENTION_INITS = ("default", "identity")
STEM_TYPES = ("", "deep", "deep_tiered")  # timm ResNet stems
# Arguments of each encoder that follow the preset only with its encoder.
_ENCODER_ARGS = {
    "seg_encoder": ("seg_widths", "seg_stem_width", "seg_stem_type"),
    "cls_encoder": ("cls_widths", "cls_stem_width", "cls_stem_type"),
}


@dataclass
class ModelConfig:
    """Configuration of :class:`hermes.models.HermesModel`.

    Args:
        preset: ``"small"``, ``"lite0"`` or ``"paper"``; fills the fields left at ``None``.
        num_classes: classification classes, 2 (benign/malignant) or 3 (with normal).
        seg_classes: segmentation classes (2: background, lesion).
        attention: inter-task attention of segmentation features into classification.
        saliency: input-gradient saliency of the classification branch fed to the decoder.
        detach_seg_features: stop the classification loss' gradient at the segmentation
            features entering the attention (the authors' code does; the paper is silent).
        pretrained_cls: weights of the classification encoder: ``"none"`` (random
            initialisation), ``"imagenet"`` (weights shipped by an installed package, else
            timm's hub, else an error saying which file to pass) or the path of a local
            timm/torchvision state dict. The input normalisation follows the weights.
        pretrained_seg: the same for the segmentation encoder.
        seg_encoder: timm model name of the segmentation encoder (``features_only``, features at
            strides (2,) 4, 8, 16, 32).
        seg_widths: stage widths passed to timm as ``channels`` (ResNet family), ``None``: timm's.
        seg_stem_width: stem width passed to timm as ``stem_width``, ``None``: timm's.
        seg_stem_type: timm ResNet ``stem_type`` (``""``, ``"deep"``), ``None``: timm's.
        decoder_channels: widths of the five decoder blocks (1/16, 1/8, 1/4, 1/2, 1/1).
        decoder_dropout: dropout between the two convolutions of each decoder block.
        cls_encoder: timm model name of the classification encoder; the attention acts at its
            first four ``feature_info`` levels.
        cls_widths: the four stage widths of a ResNet-family classification encoder
            (``None``: timm's).
        cls_stem_width: its stem width (timm's ``stem_width``: the deep stem's inner width;
            a plain stem is always 64 wide); ``None``: timm's.
        cls_stem_type: its timm ``stem_type``: ``""`` (plain 7x7, ResNet-18) or ``"deep"``.
        embed_dim: pixel embedding width (ContrastiveSeg projection head).
        proj_hidden, proj_dim: classification projection head widths.
        consistency_dim: width of both branches' consistency embeddings.
        attention_reduction: channel-gate reduction ratio of the IAS modules.
        attention_source: which segmentation features feed the attention: the ``decoder``
            block outputs or the ``encoder`` stages at the attention's strides.
        attention_init: ``"default"`` (PyTorch's initialisation, as the paper) or
            ``"identity"``: each attention starts as a uniform scaling of the classification
            feature (zero weights in the channel gate's last layer and the spatial convolution),
            so that pretrained encoder features are not scrambled at the start.
    """

    preset: str = "small"
    num_classes: int = 2
    seg_classes: int = 2
    attention: bool = True
    saliency: bool = True
    detach_seg_features: bool = True
    pretrained_cls: str | None = None
    pretrained_seg: str | None = None
    seg_encoder: str | None = None
    seg_widths: tuple[int, ...] | None = None
    seg_stem_width: int | None = None
    seg_stem_type: str | None = None
    decoder_channels: tuple[int, ...] | None = None
    decoder_dropout: float = 0.25
    cls_encoder: str | None = None
    cls_widths: tuple[int, ...] | None = None
    cls_stem_width: int | None = None
    cls_stem_type: str | None = None
    embed_dim: int = 256
    proj_hidden: int = 256
    proj_dim: int = 128
    consistency_dim: int = 256
    attention_reduction: int = 4
    attention_source: str = "decoder"
    attention_init: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"ModelConfig.preset must be one of {sorted(PRESETS)}, got {self.preset!r}"
            )
        # Presets fill what was not given. The encoders' width/stem arguments may legitimately
        # be None (timm's own), so they follow the preset only with its encoder.
        preset = PRESETS[self.preset]
        own = {
            arg
            for encoder, args in _ENCODER_ARGS.items()
            if getattr(self, encoder) is not None and getattr(self, encoder) != preset[encoder]
            for arg in args
        }
        for name, value in preset.items():
            if name in own:
                continue
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("seg_widths", "decoder_channels", "cls_widths"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))  # YAML gives lists
        self._validate()

    def _validate(self) -> None:
        if self.num_classes not in (2, 3):
            raise ValueError(f"ModelConfig.num_classes must be 2 or 3, got {self.num_classes!r}")
        if not isinstance(self.seg_classes, int) or self.seg_classes < 2:
            raise ValueError(
                f"ModelConfig.seg_classes must be an int >= 2, got {self.seg_classes!r}"
            )
        for name in ("attention", "saliency", "detach_seg_features"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        _check_widths("seg_widths", self.seg_widths, 4, allow_none=True)
        _check_widths("decoder_channels", self.decoder_channels, 5)
        _check_widths("cls_widths", self.cls_widths, 4, allow_none=True)
        for name in (
            "embed_dim",
            "proj_hidden",
            "proj_dim",
            "consistency_dim",
            "attention_reduction",
        ):
            _check_positive_int(name, getattr(self, name))
        for name in ("seg_stem_width", "cls_stem_width"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("seg_stem_type", "cls_stem_type"):
            value = getattr(self, name)
            if value is not None and value not in STEM_TYPES:
                raise ValueError(f"ModelConfig.{name} must be one of {STEM_TYPES}, got {value!r}")
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError(
                f"ModelConfig.decoder_dropout must be in [0, 1), got {self.decoder_dropout!r}"
            )
        if self.attention_init not in ATTENTION_INITS:
            raise ValueError(
                f"ModelConfig.attention_init must be one of {ATTENTION_INITS}, "
                f"got {self.attention_init!r}"
            )
        if self.attention_source not in ATTENTION_SOURCES:
            raise ValueError(
                f"ModelConfig.attention_source must be one of {ATTENTION_SOURCES}, "
                f"got {self.attention_source!r}"
            )
        for name in ("pretrained_cls", "pretrained_seg", "seg_encoder", "cls_encoder"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"ModelConfig.{name} must be a string or None, got {value!r}")
        for name in ("pretrained_cls", "pretrained_seg"):
            if getattr(self, name) == "":
                raise ValueError(
                    f"ModelConfig.{name} must be 'none', 'imagenet' or a file path, got ''"
                )


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")


def _check_widths(name: str, value: Any, length: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        not isinstance(value, tuple)
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"ModelConfig.{name} must be {length} positive ints, got {value!r}")
