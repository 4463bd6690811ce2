"""The segmentation branch: a timm encoder, a U-Net decoder, the pixel and consistency heads."""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hermes.models.config import ModelConfig
from hermes.models.layers import ConsistencyHead, DecoderBlock, PixelProjectionHead
from hermes.models.pretrained import load_encoder_weights

REDUCTIONS = (2, 4, 8, 16, 32)
SALIENCY_CHANNELS = 4  # the image (3) and its saliency map (1)


@dataclass
class SegOutput:
    """What :meth:`HermesModel.forward_seg` returns.

    Attributes:
        logits: (B, seg_classes, H, W).
        embedding: (B, embed_dim, H/8, W/8), L2-normalised over channels at every pixel.
        consistency: (B, consistency_dim), the inter-task consistency embedding.
        features: the four segmentation features for the inter-task attention, at 1/2, 1/4,
            1/8 and 1/16 of the input (decoder block outputs or encoder stages, see
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
    """Encoder (timm ``features_only``, strides 2..32) + U-Net decoder + heads.

    The decoder has five blocks (to 1/16, 1/8, 1/4, 1/2, 1/1); the block at 1/4 also takes the
    image and its saliency (4 channels, area-resized to 1/4) when ``cfg.saliency``. A 1x1 conv
    gives ``seg_classes`` logits at input resolution.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = timm.create_model(
            cfg.seg_encoder,
            pretrained=False,
            features_only=True,
            out_indices=(0, 1, 2, 3, 4),
            **timm_resnet_args(cfg.seg_widths, cfg.seg_stem_width, cfg.seg_stem_type),
        )
        reductions = tuple(self.encoder.feature_info.reduction())
        if reductions != REDUCTIONS:
            raise ValueError(
                f"seg_encoder {cfg.seg_encoder!r} must give features at strides {REDUCTIONS}, "
                f"got {reductions}"
            )
        if cfg.pretrained_seg is not None:
            load_encoder_weights(
                self.encoder, cfg.pretrained_seg, what=f"segmentation encoder {cfg.seg_encoder}"
            )
        enc = self.encoder.feature_info.channels()  # at 1/2 .. 1/32
        dec = cfg.decoder_channels
        extra = SALIENCY_CHANNELS if cfg.saliency else 0
        skips = (enc[3], enc[2], enc[1] + extra, enc[0], 0)
        ins = (enc[4], *dec[:4])
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, o, cfg.decoder_dropout)
            for i, s, o in zip(ins, skips, dec, strict=True)
        )
        self.head = nn.Conv2d(dec[4], cfg.seg_classes, 1)
        self.pixel_head = PixelProjectionHead(enc[2], cfg.embed_dim)
        self.consistency_head = ConsistencyHead(enc[4], cfg.consistency_dim, cfg.consistency_dim)
        if cfg.attention_source == "decoder":
            self.feature_channels = (dec[3], dec[2], dec[1], dec[0])
        else:
            self.feature_channels = tuple(enc[:4])

    def forward(self, x: Tensor, saliency: Tensor | None = None) -> SegOutput:
        """Shapes: x (B, 3, H, W), saliency (B, 1, H, W) when ``cfg.saliency`` else None."""
        f = self.encoder(x)  # 1/2, 1/4, 1/8, 1/16, 1/32
        skip4 = f[1]
        if saliency is not None:
            side = torch.cat([x, saliency.detach().to(x.dtype)], dim=1)
            side = F.interpolate(side, size=skip4.shape[-2:], mode="area")
            skip4 = torch.cat([skip4, side.to(skip4.dtype)], dim=1)
        d16 = self.decoder[0](f[4], f[3])
        d8 = self.decoder[1](d16, f[2])
        d4 = self.decoder[2](d8, skip4)
        d2 = self.decoder[3](d4, f[0])
        d1 = self.decoder[4](d2)
        features = [d2, d4, d8, d16] if self.cfg.attention_source == "decoder" else list(f[:4])
        return SegOutput(
            logits=self.head(d1),
            embedding=self.pixel_head(f[2]),
            consistency=self.consistency_head(f[4].mean(dim=(2, 3))),
            features=features,
        )
