"""The two-branch Hermes network with inter-task attention and saliency (IAS)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hermes.models.cls import ClassificationBranch, ClsOutput, attention_depths, build_cls_encoder
from hermes.models.config import ModelConfig
from hermes.models.layers import frozen_bn_statistics
from hermes.models.seg import SegmentationBranch, SegOutput

MODES = ("seg", "cls", "saliency")


def _check_images(x: Tensor, where: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{where}: images must be (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[-2] % 32 or x.shape[-1] % 32:
        raise ValueError(
            f"{where}: image height and width must be divisible by 32, got {tuple(x.shape[-2:])}"
        )


class HermesModel(nn.Module):
    """Segmentation branch ``.seg`` and classification branch ``.cls``.

    ``seg.parameters()`` and ``cls.parameters()`` partition ``parameters()`` (the attention
    adapters belong to ``cls``), so each branch can have its own optimiser or parameter group.
    ``backend`` forces the backend of the attention's fused op (``None``: automatic dispatch).
    """

    def __init__(
        self, cfg: ModelConfig, load_weights: bool = True, backend: str | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # The classification encoder decides where the attention acts (its first four feature
        # strides), so it is built first and the segmentation branch provides those strides.
        cls_encoder = build_cls_encoder(cfg, load_weights)
        strides = tuple(d["reduction"] for d in attention_depths(cls_encoder, cfg.cls_encoder))
        self.seg = SegmentationBranch(cfg, strides, load_weights)
        self.cls = ClassificationBranch(
            cfg, self.seg.feature_channels, cls_encoder, backend=backend
        )

    def saliency(self, x: Tensor) -> Tensor | None:
        """Input-gradient saliency of the classification branch (without attention).

        ``max_over_rgb |d max_k logit_k / d x|``, then min-max normalised per image to [0, 1].
        Computed with ``torch.autograd.grad`` on a detached copy of ``x``: no parameter
        ``.grad`` is touched and BatchNorm running statistics are left unchanged (train-mode
        BatchNorm still uses the batch statistics).

        Shapes: x (B, 3, H, W) -> (B, 1, H, W) float32, detached; ``None`` when
        ``cfg.saliency`` is False.
        """
        if not self.cfg.saliency:
            return None
        _check_images(x, "HermesModel.saliency")
        # Also under torch.inference_mode (evaluation): the clone is an ordinary tensor.
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            frozen_bn_statistics(self.cls),
        ):
            x_in = x.detach().clone().requires_grad_(True)
            logits = self.cls.classifier(self.cls.pooled_features(x_in))  # no heads needed
            (grad,) = torch.autograd.grad(
                logits.float().amax(dim=1).sum(), x_in, create_graph=False
            )
        sal = grad.float().abs().amax(dim=1, keepdim=True)
        low = sal.amin(dim=(2, 3), keepdim=True)
        high = sal.amax(dim=(2, 3), keepdim=True)
        return ((sal - low) / (high - low).clamp_min(1e-12)).detach()

    def forward_seg(self, x: Tensor, saliency: Tensor | None = None) -> SegOutput:
        """Segmentation forward. Shapes: x (B, 3, H, W) ImageNet-normalised (each encoder
        re-normalises to its weights' statistics), H and W divisible by 32; saliency (B, 1, H, W) from :meth:`saliency`, required iff ``cfg.saliency``.
        Returns a :class:`SegOutput`."""
        _check_images(x, "HermesModel.forward_seg")
        if self.cfg.saliency and saliency is None:
            raise ValueError(
                "HermesModel.forward_seg: cfg.saliency is True, so pass saliency=model.saliency(x)"
            )
        if not self.cfg.saliency and saliency is not None:
            raise ValueError(
                "HermesModel.forward_seg: got a saliency map but cfg.saliency is False"
            )
        if saliency is not None and (
            saliency.dim() != 4 or saliency.shape != (x.shape[0], 1, *x.shape[-2:])
        ):
            raise ValueError(
                f"HermesModel.forward_seg: saliency must be {(x.shape[0], 1, *x.shape[-2:])}, "
                f"got {tuple(saliency.shape)}"
            )
        return self.seg(x, saliency)

    def forward_cls(self, x: Tensor, seg_features: list[Tensor] | None = None) -> ClsOutput:
        """Classification forward; with ``seg_features`` (``SegOutput.features``) the
        inter-task attention is applied, with ``None`` it is skipped (unlabeled passes).
        The features are detached first when ``cfg.detach_seg_features``.
        Returns a :class:`ClsOutput`."""
        _check_images(x, "HermesModel.forward_cls")
        if seg_features is not None:
            if not self.cfg.attention:
                raise ValueError(
                    "HermesModel.forward_cls: got seg_features but cfg.attention is False"
                )
            self._check_seg_features(x, seg_features)
            if self.cfg.detach_seg_features:
                seg_features = [f.detach() for f in seg_features]
        return self.cls(x, seg_features)

    def forward(
        self,
        x: Tensor,
        mode: str = "seg",
        *,
        saliency: Tensor | None = None,
        seg_features: list[Tensor] | None = None,
    ) -> SegOutput | ClsOutput | Tensor | None:
        """Dispatch for wrappers that only call ``forward`` (DeepSpeed engines): ``mode`` is
        ``"seg"`` (:meth:`forward_seg`), ``"cls"`` (:meth:`forward_cls`) or ``"saliency"``."""
        if mode == "seg":
            return self.forward_seg(x, saliency=saliency)
        if mode == "cls":
            return self.forward_cls(x, seg_features=seg_features)
        if mode == "saliency":
            return self.saliency(x)
        raise ValueError(f"HermesModel.forward: mode must be one of {MODES}, got {mode!r}")

    def _check_seg_features(self, x: Tensor, features: list[Tensor]) -> None:
        expected = [
            (x.shape[0], c, x.shape[-2] // s, x.shape[-1] // s)
            for c, s in zip(self.seg.feature_channels, self.seg.attention_strides, strict=True)
        ]
        actual = [tuple(f.shape) for f in features]
        if actual != expected:
            raise ValueError(
                f"HermesModel.forward_cls: seg_features must have shapes {expected}, got {actual}"
            )


def build_model(
    cfg: ModelConfig | None = None, load_weights: bool = True, backend: str | None = None
) -> HermesModel:
    """Build the network of ``cfg`` (default: ``ModelConfig()``, the small preset).

    ``load_weights=False`` skips reading the configured pretrained weights (the structure and
    input normalisation are the same): for a model whose weights come from a checkpoint.
    ``backend`` forces the backend of the inter-task attention's fused op (``"torch"``,
    ``"triton"``, ``"cpp"``, ``"cuda"``; ``None``: automatic dispatch)."""
    return HermesModel(cfg if cfg is not None else ModelConfig(), load_weights, backend)
