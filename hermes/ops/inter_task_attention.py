"""The IAS fusion block: inter-task attention of the segmentation branch into classification.

``inter_task_attention`` is the part after the learnable convolutions (gate apply, channel max
and mean, spatial 3x3 conv, sigmoid, product), which the fused backends run in two kernels;
:class:`InterTaskAttention` is the module with the learnable parts around it.

Empty inputs (B, C, H or W = 0) give an empty (B, C, H, W) output whatever the backend (the
public op answers them with the reference); the gradients of the spatial weight and bias are
then zero. The public op checks the inputs; a backend only computes ``y`` from non-empty ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hermes.ops import dispatch


def inter_task_attention_reference(
    cls_feature: Tensor, gate: Tensor, spatial_weight: Tensor, spatial_bias: Tensor
) -> Tensor:
    """Reference. Shapes: cls_feature (B, C, H, W), gate (B, C) (after its sigmoid),
    spatial_weight (1, 2, k, k) with k odd, spatial_bias (1,). Returns (B, C, H, W) in the
    feature's dtype:

        c = gate[..., None, None] * cls_feature
        y = sigmoid(conv2d(cat[max_C(c), mean_C(c)], w, b, padding=k // 2)) * c
    """
    c = gate[:, :, None, None].to(cls_feature.dtype) * cls_feature
    if c.numel() == 0:  # nothing to pool over; keep the graph to every input (zero gradients)
        return c + 0 * (spatial_weight.sum() + spatial_bias.sum()).to(c.dtype)
    pooled = torch.cat([c.amax(dim=1, keepdim=True), c.mean(dim=1, keepdim=True)], dim=1)
    k = spatial_weight.shape[-1]
    a = torch.sigmoid(
        F.conv2d(pooled, spatial_weight.to(c.dtype), spatial_bias.to(c.dtype), padding=k // 2)
    )
    return a * c


dispatch.register("inter_task_attention", "torch", inter_task_attention_reference)


def inter_task_attention(
    cls_feature: Tensor,
    gate: Tensor,
    spatial_weight: Tensor,
    spatial_bias: Tensor,
    *,
    backend: str | None = None,
) -> Tensor:
    """Gate the classification feature per channel, then spatially (see the reference).

    Args:
        cls_feature: (B, C, H, W), floating point.
        gate: (B, C), floating point, the channel gate already through its sigmoid.
        spatial_weight: (1, 2, k, k), k odd; spatial_bias: (1,); both floating point.
        backend: ``None`` (automatic), ``"torch"``, ``"triton"``, ``"cpp"`` or ``"cuda"``.

    Returns:
        (B, C, H, W), differentiable in all four inputs; empty when any of B, C, H, W is 0.

    Raises:
        ValueError: a shape is wrong or an input is not floating point (names the input).
    """
    if cls_feature.dim() != 4:
        raise ValueError(
            f"inter_task_attention: cls_feature must be (B, C, H, W), got {tuple(cls_feature.shape)}"
        )
    b, c = cls_feature.shape[:2]
    if gate.shape != (b, c):
        raise ValueError(f"inter_task_attention: gate must be ({b}, {c}), got {tuple(gate.shape)}")
    if (
        spatial_weight.dim() != 4
        or spatial_weight.shape[:2] != (1, 2)
        or (spatial_weight.shape[2] != spatial_weight.shape[3] or spatial_weight.shape[2] % 2 == 0)
    ):
        raise ValueError(
            "inter_task_attention: spatial_weight must be (1, 2, k, k) with k odd, "
            f"got {tuple(spatial_weight.shape)}"
        )
    if spatial_bias.shape != (1,):
        raise ValueError(
            f"inter_task_attention: spatial_bias must be (1,), got {tuple(spatial_bias.shape)}"
        )
    named = (
        ("cls_feature", cls_feature),
        ("gate", gate),
        ("spatial_weight", spatial_weight),
        ("spatial_bias", spatial_bias),
    )
    for name, t in named:
        if not t.is_floating_point():
            raise ValueError(f"inter_task_attention: {name} must be floating point, got {t.dtype}")
    inputs = dict(
        cls_feature=cls_feature, gate=gate, spatial_weight=spatial_weight, spatial_bias=spatial_bias
    )
    impl = dispatch.select("inter_task_attention", backend, cls_feature.device, inputs)
    if cls_feature.numel() == 0:  # nothing to compute: the reference's empty output and graph
        return inter_task_attention_reference(**inputs)
    return impl.fn(**inputs)


class InterTaskAttention(nn.Module):
    """IAS fusion of a segmentation feature ``s`` into a classification feature ``c``.

    ``f = conv3x3(cat[c, s])`` (2C -> C); ``g = sigmoid(FC2(ReLU(FC1(GAP(f)))))`` with reduction
    ``reduction``; then :func:`inter_task_attention` with the learnable spatial conv (2 -> 1).
    ``s`` must already have ``C`` channels and ``c``'s spatial size.
    """

    def __init__(
        self, channels: int, reduction: int = 4, kernel_size: int = 3, backend: str | None = None
    ) -> None:
        super().__init__()
        if channels < 1 or reduction < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"InterTaskAttention: need channels >= 1, reduction >= 1 and odd kernel_size, "
                f"got {channels}, {reduction}, {kernel_size}"
            )
        hidden = max(channels // reduction, 1)
        self.fuse = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.backend = backend

    def forward(self, c: Tensor, s: Tensor) -> Tensor:
        if s.shape != c.shape:
            raise ValueError(
                f"InterTaskAttention: segmentation feature {tuple(s.shape)} must match the "
                f"classification feature {tuple(c.shape)}"
            )
        f = self.fuse(torch.cat([c, s], dim=1))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(f.mean(dim=(2, 3))))))
        return inter_task_attention(
            c, gate, self.spatial.weight, self.spatial.bias, backend=self.backend
        )
