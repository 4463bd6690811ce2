"""The classification branch: a timm encoder with inter-task attention at its first four
feature depths."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hermes.models.config import ModelConfig
from hermes.models.layers import ConsistencyHead, ProjectionHead, conv_bn_act
from hermes.models.pretrained import InputNorm, create_encoder, input_statistics
from hermes.models.seg import timm_resnet_args
from hermes.ops import InterTaskAttention

ALLOWED_STRIDES = (2, 4, 8, 16, 32)
IDENTITY_BIAS = 3.0  # sigmoid(3) = 0.95


@dataclass
class ClsOutput:
    """What :meth:`HermesModel.forward_cls` returns.

    Attributes:
        logits: (B, num_classes).
        projection: (B, proj_dim), L2-normalised (for the image-level contrast).
        consistency: (B, consistency_dim), the inter-task consistency embedding.
    """

    logits: Tensor
    projection: Tensor
    consistency: Tensor


class SegAttention(nn.Module):
    """Adapter (two conv3x3-BN-ReLU, seg_ch -> ch) then :class:`InterTaskAttention`.

    Shapes: c (B, ch, h, w), s (B, seg_ch, h, w) -> (B, ch, h, w).
    """

    def __init__(
        self, seg_ch: int, ch: int, reduction: int, backend: str | None, init: str = "default"
    ) -> None:
        super().__init__()
        self.adapter = nn.Sequential(
            conv_bn_act(seg_ch, ch, nn.ReLU(inplace=True)),
            conv_bn_act(ch, ch, nn.ReLU(inplace=True)),
        )
        self.attention = InterTaskAttention(ch, reduction=reduction, backend=backend)
        if init == "identity":
            self.start_as_identity()

    @torch.no_grad()
    def start_as_identity(self, bias: float = IDENTITY_BIAS) -> None:
        """Make the attention start as a uniform scaling, ``sigmoid(bias)^2 * c`` (0.91 for the
        default bias 3), whatever the features: the channel gate's last layer and the spatial
        convolution get zero weights and bias ``bias``. Both still receive gradients, so the
        attention is learned from there. Used with pretrained encoders, whose features a random
        attention would scramble at four depths (measured on BUSI: a supervised classifier at
        AUC 0.75 with random attention, 0.88 without attention)."""
        a = self.attention
        for layer in (a.fc2, a.spatial):
            layer.weight.zero_()
            layer.bias.fill_(bias)

    def forward(self, c: Tensor, s: Tensor) -> Tensor:
        return self.attention(c, self.adapter(s).to(c.dtype))


def build_cls_encoder(cfg: ModelConfig, load_weights: bool = True) -> nn.Module:
    """The classification encoder of ``cfg``: a timm model without classifier
    (``num_classes=0``: its forward returns pooled features), with the configured weights."""
    return create_encoder(
        cfg.cls_encoder,
        cfg.pretrained_cls,
        what=f"classification encoder {cfg.cls_encoder}",
        load=load_weights,
        num_classes=0,
        **timm_resnet_args(cfg.cls_widths, cfg.cls_stem_width, cfg.cls_stem_type),
    )


def attention_depths(encoder: nn.Module, name: str) -> list[dict]:
    """The first four entries of a timm encoder's ``feature_info`` (module name, channels,
    stride): where the inter-task attention acts. ResNet: the stem activation (1/2) and
    layer1-3; EfficientNet: the ends of blocks 0, 1, 2, 4; ConvNeXt: stages 0-3 (1/4-1/32)."""
    info = getattr(encoder, "feature_info", None)
    if not isinstance(info, list) or len(info) < 4:
        raise ValueError(
            f"classification encoder {name!r} must be a timm model with at least four "
            f"feature_info levels, got {info!r}"
        )
    depths = info[:4]
    strides = tuple(d["reduction"] for d in depths)
    if strides not in (ALLOWED_STRIDES[:4], ALLOWED_STRIDES[1:]):
        raise ValueError(
            f"classification encoder {name!r}: its first four feature levels must be at strides "
            f"(2, 4, 8, 16) or (4, 8, 16, 32), got {strides}"
        )
    return depths


class ClassificationBranch(nn.Module):
    """A timm encoder + linear classifier + projection and consistency heads, with optional
    inter-task attention (the adapters and IAS modules belong to this branch).

    The attention is applied to the outputs of the encoder modules named by its first four
    ``feature_info`` levels, through forward hooks: any timm family that lists its feature
    modules works (ResNet, Res2Net, EfficientNet, ConvNeXt, ...).

    Args:
        cfg: the model configuration.
        seg_feature_channels: channels of the four segmentation features, in stride order.
        encoder: a prebuilt :func:`build_cls_encoder` (``None``: build it here).
        load_weights: read the configured pretrained weights when building the encoder.
        backend: backend of the attention's fused op (``None``: automatic dispatch).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        seg_feature_channels: tuple[int, ...],
        encoder: nn.Module | None = None,
        load_weights: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else build_cls_encoder(cfg, load_weights)
        self.input_norm = InputNorm(
            *input_statistics(cfg.cls_encoder, cfg.pretrained_cls, self.encoder)
        )
        depths = attention_depths(self.encoder, cfg.cls_encoder)
        self.attention_strides = tuple(d["reduction"] for d in depths)
        self.attention = None
        self._seg_features: list[Tensor] | None = None
        if cfg.attention:
            self.attention = nn.ModuleList(
                SegAttention(s, d["num_chs"], cfg.attention_reduction, backend, cfg.attention_init)
                for s, d in zip(seg_feature_channels, depths, strict=True)
            )
            for i, d in enumerate(depths):
                self.encoder.get_submodule(d["module"]).register_forward_hook(_Attend(self, i))
        dim = getattr(self.encoder, "head_hidden_size", None) or self.encoder.num_features
        self.classifier = nn.Linear(dim, cfg.num_classes)
        self.projection_head = ProjectionHead(dim, cfg.proj_hidden, cfg.proj_dim)
        self.consistency_head = ConsistencyHead(dim, cfg.consistency_dim, cfg.consistency_dim)

    def forward(self, x: Tensor, seg_features: list[Tensor] | None = None) -> ClsOutput:
        """Shapes: x (B, 3, H, W); seg_features four (B, C_i, H/s_i, W/s_i) at
        ``attention_strides`` or None (no attention). Detaching them, when configured, is the
        caller's job."""
        pooled = self.pooled_features(x, seg_features)
        return ClsOutput(
            logits=self.classifier(pooled),
            projection=self.projection_head(pooled),
            consistency=self.consistency_head(pooled),
        )

    def pooled_features(self, x: Tensor, seg_features: list[Tensor] | None = None) -> Tensor:
        """The encoder with optional attention, globally pooled. Shapes: -> (B, num_features)."""
        with self._attending(seg_features):
            return self.encoder(self.input_norm(x))

    @contextlib.contextmanager
    def _attending(self, seg_features: list[Tensor] | None) -> Iterator[None]:
        self._seg_features = seg_features
        try:
            yield
        finally:
            self._seg_features = None


class _Attend:
    """Forward hook applying the branch's attention at one depth while ``pooled_features`` has
    segmentation features to attend to. An object, not a closure, so that ``copy.deepcopy`` of
    the branch (e.g. an EMA teacher) gives hooks that point at the copy."""

    def __init__(self, branch: ClassificationBranch, depth: int) -> None:
        self.branch, self.depth = branch, depth

    def __call__(self, module: nn.Module, args: object, output: Tensor) -> Tensor | None:
        features = self.branch._seg_features
        if features is None:
            return None  # output unchanged
        return self.branch.attention[self.depth](output, features[self.depth])
