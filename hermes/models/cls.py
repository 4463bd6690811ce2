"""The classification branch: a ResNet (timm) with inter-task attention at four depths."""

from __future__ import annotations

from dataclasses import dataclass

import timm
from torch import Tensor, nn

from hermes.models.config import ModelConfig
from hermes.models.layers import ConsistencyHead, ProjectionHead, conv_bn_act
from hermes.models.pretrained import load_encoder_weights
from hermes.models.seg import timm_resnet_args
from hermes.ops import InterTaskAttention

# The four attention depths of the ResNet: after the stem conv (1/2), layer1 (1/4),
# layer2 (1/8), layer3 (1/16).
ATTENTION_DEPTHS = ("stem", "layer1", "layer2", "layer3")
_RESNET_PARTS = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")


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

    def __init__(self, seg_ch: int, ch: int, reduction: int, backend: str | None) -> None:
        super().__init__()
        self.adapter = nn.Sequential(
            conv_bn_act(seg_ch, ch, nn.ReLU(inplace=True)),
            conv_bn_act(ch, ch, nn.ReLU(inplace=True)),
        )
        self.attention = InterTaskAttention(ch, reduction=reduction, backend=backend)

    def forward(self, c: Tensor, s: Tensor) -> Tensor:
        return self.attention(c, self.adapter(s).to(c.dtype))


class ClassificationBranch(nn.Module):
    """ResNet encoder + linear classifier + projection and consistency heads, with optional
    inter-task attention (the adapters and IAS modules belong to this branch)."""

    def __init__(self, cfg: ModelConfig, seg_feature_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = timm.create_model(
            cfg.cls_encoder,
            pretrained=False,
            num_classes=0,
            **timm_resnet_args(cfg.cls_widths, cfg.cls_stem_width, cfg.cls_stem_type),
        )
        absent = [p for p in _RESNET_PARTS if not hasattr(self.encoder, p)]
        if absent:
            raise ValueError(
                f"cls_encoder {cfg.cls_encoder!r} must be a timm ResNet (with "
                f"{', '.join(_RESNET_PARTS)}); it lacks {absent}"
            )
        if cfg.pretrained_cls is not None:
            load_encoder_weights(
                self.encoder, cfg.pretrained_cls, what=f"classification encoder {cfg.cls_encoder}"
            )
        stem_out = self.encoder.feature_info[0]["num_chs"]
        cls_channels = (stem_out, *cfg.cls_widths[:3])
        self.attention = (
            nn.ModuleList(
                SegAttention(s, c, cfg.attention_reduction, cfg.backend)
                for s, c in zip(seg_feature_channels, cls_channels, strict=True)
            )
            if cfg.attention
            else None
        )
        dim = self.encoder.num_features
        self.classifier = nn.Linear(dim, cfg.num_classes)
        self.projection_head = ProjectionHead(dim, cfg.proj_hidden, cfg.proj_dim)
        self.consistency_head = ConsistencyHead(dim, cfg.consistency_dim, cfg.consistency_dim)

    def forward(self, x: Tensor, seg_features: list[Tensor] | None = None) -> ClsOutput:
        """Shapes: x (B, 3, H, W); seg_features four (B, C_i, H/2^(i+1), W/2^(i+1)) or None
        (no attention). Detaching them, when configured, is the caller's job."""
        pooled = self.pooled_features(x, seg_features)
        return ClsOutput(
            logits=self.classifier(pooled),
            projection=self.projection_head(pooled),
            consistency=self.consistency_head(pooled),
        )

    def pooled_features(self, x: Tensor, seg_features: list[Tensor] | None = None) -> Tensor:
        """The encoder with optional attention, globally pooled. Shapes: -> (B, num_features)."""
        e = self.encoder
        h = e.act1(e.bn1(e.conv1(x)))
        h = self._attend(0, h, seg_features)
        h = self._attend(1, e.layer1(e.maxpool(h)), seg_features)
        h = self._attend(2, e.layer2(h), seg_features)
        h = self._attend(3, e.layer3(h), seg_features)
        return e.global_pool(e.layer4(h))

    def _attend(self, depth: int, h: Tensor, seg_features: list[Tensor] | None) -> Tensor:
        if seg_features is None:
            return h
        return self.attention[depth](h, seg_features[depth])
