"""Building blocks shared by the two branches: conv blocks, the U-Net decoder and the heads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_act(in_ch: int, out_ch: int, act: nn.Module) -> nn.Sequential:
    """conv3x3 (no bias) - BatchNorm - ``act``. Shapes: (B, in_ch, H, W) -> (B, out_ch, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), act
    )


class DecoderBlock(nn.Module):
    """U-Net decoder block: upsample x2 (bilinear), concatenate the skip, then
    conv3x3-BN-LeakyReLU(0.2), Dropout, conv3x3-BN-LeakyReLU(0.2).

    Shapes: x (B, in_ch, h, w), skip (B, skip_ch, 2h, 2w) or None -> (B, out_ch, 2h, 2w).
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(in_ch + skip_ch, out_ch, nn.LeakyReLU(0.2, inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv_bn_act(out_ch, out_ch, nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        size = (2 * x.shape[-2], 2 * x.shape[-1]) if skip is None else skip.shape[-2:]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip.to(x.dtype)], dim=1)
        return self.conv2(self.dropout(self.conv1(x)))


class PixelProjectionHead(nn.Module):
    """ContrastiveSeg projection: conv1x1-BN-ReLU-conv1x1, L2-normalised over channels.

    Shapes: (B, in_ch, h, w) -> (B, out_ch, h, w), unit norm at every pixel.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 1, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)


class ConsistencyHead(nn.Module):
    """Linear-BN-ReLU-Linear-BN-ReLU on a pooled feature. Shapes: (B, in_dim) -> (B, out_dim).

    Train-mode BatchNorm needs a batch of at least 2.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
            nn.BatchNorm1d(out_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """SupCon projection: Linear-LeakyReLU(0.1)-Linear, L2-normalised.

    Shapes: (B, in_dim) -> (B, out_dim), unit norm per row.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LeakyReLU(0.1, inplace=True), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside, train-mode BatchNorm layers of ``module`` normalise with batch statistics but leave
    their running statistics and ``num_batches_tracked`` unchanged (a no-op when not enabled)."""
    saved = []
    if enabled:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                saved.append((m, m.momentum, m.num_batches_tracked.clone()))
                m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
