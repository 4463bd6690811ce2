"""The segmentation branch: a timm encoder, a U-Net decoder, the pixel and consistency heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hermes.models.config import ModelConfig
from hermes.models.layers import ConsistencyHead, DecoderBlock, PixelProjectionHead
from hermes.models.pretrained import InputNorm, create_encoder, input_statistics

# The encoder's feature strides: 2 (optional: ConvNeXt-like encoders start at 4), 4, 8, 16, 32.
REQUIRED_STRIDES = (4, 8, 16, 32)
DECODER_STRIDES = (16, 8, 4, 2, 1)  # where the five decoder blocks end
SALIENCY_CHANNELS = 4  # the image (3) and its saliency map (1)


@dataclass
class SegOutput:
    """What :meth:`HermesModel.forward_seg` returns.

    Attributes:
        logits: (B, seg_classes, H, W).
        embedding: (B, embed_dim, H/8, W/8), L2-normalised over channels at every pixel.
        consistency: (B, consistency_dim), the inter-task consistency embedding.
        features: the four segmentation features for the inter-task attention, at the
            classification encoder's four attention strides (1/2, 1/4, 1/8, 1/16 for ResNets
            and EfficientNets), decoder block outputs or encoder stages (see
            ``ModelConfig.attention_source``); not detached here.
    """

    logits: Tensor
    embedding: Tensor
    consistency: Tensor
    features: list[Tensor]


def timm_resnet_args(
    widths: tuple[int, ...] | None, stem_width: int | None, stem_type: str | None
) -> dict[str, object]:
    """The timm ResNet-family keyword arguments that are set (``None`` keeps timm's default)."""
    args = {"channels": widths, "stem_width": stem_width, "stem_type": stem_type}
    return {k: v for k, v in args.items() if v is not None}


class SegmentationBranch(nn.Module):
    """Encoder (timm ``features_only``, strides (2,) 4, 8, 16, 32) + U-Net decoder + heads.

    The decoder has five blocks (to 1/16, 1/8, 1/4, 1/2, 1/1), each taking the encoder feature
    of its stride as skip where there is one; the block at 1/4 also takes the image and its
    saliency (4 channels, area-resized to 1/4) when ``cfg.saliency``. A 1x1 conv gives
    ``seg_classes`` logits at input resolution.

    Args:
        cfg: the model configuration.
        attention_strides: strides of the four features handed to the classification branch.
        load_weights: read the configured pretrained weights (``False``: same structure,
            weights to come from a checkpoint).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        attention_strides: tuple[int, ...] = (2, 4, 8, 16),
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        what = f"segmentation encoder {cfg.seg_encoder}"
        self.encoder = create_encoder(
            cfg.seg_encoder,
            cfg.pretrained_seg,
            what=what,
            load=load_weights,
            features_only=True,
            **timm_resnet_args(cfg.seg_widths, cfg.seg_stem_width, cfg.seg_stem_type),
        )
        self.input_norm = InputNorm(
            *input_statistics(cfg.seg_encoder, cfg.pretrained_seg, self.encoder)
        )
        self.strides = tuple(self.encoder.feature_info.reduction())
        if self.strides[-4:] != REQUIRED_STRIDES or self.strides[:-4] not in ((), (2,)):
            raise ValueError(
                f"{what}: features must come at strides (2,) 4, 8, 16, 32, got {self.strides}"
            )
        enc = dict(zip(self.strides, self.encoder.feature_info.channels(), strict=True))
        dec = cfg.decoder_channels
        extra = SALIENCY_CHANNELS if cfg.saliency else 0
        skips = (enc[16], enc[8], enc[4] + extra, enc.get(2, 0), 0)
        ins = (enc[32], *dec[:4])
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, o, cfg.decoder_dropout)
            for i, s, o in zip(ins, skips, dec, strict=True)
        )
        self.head = nn.Conv2d(dec[4], cfg.seg_classes, 1)
        self.pixel_head = PixelProjectionHead(enc[8], cfg.embed_dim)
        self.consistency_head = ConsistencyHead(enc[32], cfg.consistency_dim, cfg.consistency_dim)
        decoded = {**dict(zip(DECODER_STRIDES, dec, strict=True)), 32: enc[32]}
        source = decoded if cfg.attention_source == "decoder" else enc
        absent = [s for s in attention_strides if s not in source]
        if absent:
            raise ValueError(
                f"{what}: attention_source {cfg.attention_source!r} has no feature at "
                f"stride(s) {absent} that the classification encoder attends at"
            )
        self.attention_strides = tuple(attention_strides)
        self.feature_channels = tuple(source[s] for s in attention_strides)

    def forward(self, x: Tensor, saliency: Tensor | None = None) -> SegOutput:
        """Shapes: x (B, 3, H, W), saliency (B, 1, H, W) when ``cfg.saliency`` else None."""
        enc = dict(zip(self.strides, self.encoder(self.input_norm(x)), strict=True))
        skip4 = enc[4]
        if saliency is not None:
            side = torch.cat([x, saliency.detach().to(x.dtype)], dim=1)
            side = F.interpolate(side, size=skip4.shape[-2:], mode="area")
            skip4 = torch.cat([skip4, side.to(skip4.dtype)], dim=1)
        d16 = self.decoder[0](enc[32], enc[16])
        d8 = self.decoder[1](d16, enc[8])
        d4 = self.decoder[2](d8, skip4)
        d2 = self.decoder[3](d4, enc.get(2))
        d1 = self.decoder[4](d2)
        source = {16: d16, 8: d8, 4: d4, 2: d2, 32: enc[32]}
        if self.cfg.attention_source == "encoder":
            source = enc
        return SegOutput(
            logits=self.head(d1),
            embedding=self.pixel_head(enc[8]),
            consistency=self.consistency_head(enc[32].mean(dim=(2, 3))),
            features=[source[s] for s in self.attention_strides],
        )
