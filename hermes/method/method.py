"""The Hermes method as one ``nn.Module``: labeled + unlabeled batch in, total loss out.

``HermesMethod(model, cfg, comm)`` wraps a :class:`hermes.models.HermesModel`; its forward
computes every loss term of the paper and returns the total loss and a dict of detached
tensors to log (the dual-threshold statistics included). A DeepSpeed engine can wrap it: the
networks are only called through ``model(x, mode=...)``.

Data parallelism (``comm.world_size > 1``). Every term has the value of the global batch on
every rank (sums and counts are all-reduced; the image-level contrast sees every rank's views
through ``comm.all_gather``), and its gradient with respect to this rank's tensors is the
gradient of the global-batch loss with respect to them. Summed over ranks, the per-rank
gradients are therefore the single-process gradient of the global batch; DeepSpeed (like DDP)
*averages* gradients over ranks, so the returned loss is the global loss times
``comm.world_size`` (the logged ``loss/total`` is the unscaled global value). Exceptions, by
construction of the method: BatchNorm statistics are per rank, and the pixel-level contrast
samples and contrasts anchors per rank (its value is the mean of the ranks' losses).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hermes.comm import Comm, LocalComm
from hermes.method.alignment import DistributionAlignment
from hermes.method.config import MethodConfig
from hermes.method.contrast import IGNORE, image_contrast, pixel_contrast
from hermes.method.losses import (
    consistency_loss,
    cross_entropy_mean,
    dice_loss,
    global_sum,
    masked_cross_entropy,
)
from hermes.method.memory import ClassQueues
from hermes.method.schedules import consistency_weight, entropy_threshold
from hermes.method.teacher import ema_update, frozen_copy
from hermes.models.layers import frozen_bn_statistics
from hermes.ops import DualThresholdOutput, dual_threshold

logger = logging.getLogger(__name__)

Batch = dict[str, Any]


@dataclass
class _Views:
    """One branch's outputs for the weak and the strong unlabeled view."""

    weak: Any
    strong: Any


def _split(out: Any, b: int) -> _Views:
    """Split a dataclass of batched tensors (weak rows first) into its two views."""
    fields = vars(out)
    weak = type(out)(**{k: _take(v, slice(0, b)) for k, v in fields.items()})
    strong = type(out)(**{k: _take(v, slice(b, None)) for k, v in fields.items()})
    return _Views(weak, strong)


def _take(value: Any, rows: slice) -> Any:
    if isinstance(value, Tensor):
        return value[rows]
    if isinstance(value, (list, tuple)):
        return [v[rows] for v in value]
    return value


class HermesMethod(nn.Module):
    """The method around a two-branch model.

    Args:
        model: a :class:`hermes.models.HermesModel` (``model.cfg`` gives the class counts,
            ``attention`` and ``saliency``).
        cfg: the :class:`MethodConfig`.
        comm: collectives for data parallelism; :class:`hermes.comm.LocalComm` by default.
        backend: forced backend of the fused ops (``None``: automatic dispatch).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: MethodConfig | None = None,
        comm: Comm | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg if cfg is not None else MethodConfig()
        self.comm: Comm = comm if comm is not None else LocalComm()
        self.backend = backend
        mcfg = model.cfg
        self.num_classes: int = mcfg.num_classes
        self.seg_classes: int = mcfg.seg_classes
        # the pseudo-label teacher (method.teacher: ema); part of the state dict when present
        self.teacher = frozen_copy(model) if self.cfg.teacher == "ema" else None
        # the class-distribution alignment of the image pseudo-labels (buffers; when enabled)
        self.alignment = (
            DistributionAlignment(
                self.num_classes, self.cfg.alignment_momentum, self.cfg.alignment_target
            )
            if self.cfg.distribution_alignment
            else None
        )
        memory = self.cfg.memory
        self.image_bank = (
            ClassQueues(self.num_classes, memory.size, mcfg.proj_dim) if memory.image else None
        )
        self.pixel_bank = (
            ClassQueues(self.seg_classes, memory.size, mcfg.embed_dim) if memory.pixel else None
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        labeled: Batch,
        unlabeled: Batch | None = None,
        step: int = 0,
        total_steps: int = 1,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step's loss.

        Args:
            labeled: ``{"image": (B, 3, H, W), "mask": (B, H, W) int64, "label": (B,) int64}``.
            unlabeled: ``{"weak": (B', 3, H, W), "strong": (B', 3, H, W)}`` (optionally the true
                ``"mask"``/``"label"``, used for monitoring only); ignored in supervised mode.
            step, total_steps: the iteration ``t`` and the schedule length ``T``.

        Returns:
            ``(loss, logs)``: the total loss to call ``backward`` on (times
            ``comm.world_size``, see the module docstring) and a dict of detached tensors
            (0-dim; schedule values on the CPU).
        """
        cfg, w, comm = self.cfg, self.cfg.weights, self.comm
        logs: dict[str, Tensor] = {}
        x, mask, y = labeled["image"], labeled["mask"].long(), labeled["label"].long()

        # Labeled pass: attention in (IAS), as the public code.
        cls_l, seg_l = full_forward(self.model, x)
        ce_l, seg_ce, seg_dice = supervised_terms(
            cls_l.logits,
            seg_l.logits,
            y,
            mask,
            comm,
            per_image=cfg.dice_per_image,
            label_smoothing=cfg.label_smoothing,
        )
        seg_sup = w.seg_ce * seg_ce + w.seg_dice * seg_dice

        eta_cls = entropy_threshold(step, total_steps, self.num_classes, cfg.eta_start)
        eta_seg = entropy_threshold(step, total_steps, self.seg_classes, cfg.eta_start)
        with torch.no_grad():
            pl_l = self._pseudo_label(cls_l.logits, eta_cls)
            log_truth(logs, "cls", pl_l, y, "labeled", comm)
            pl_seg_l = self._pseudo_label(seg_l.logits, eta_seg, pixels=True)
            log_truth(logs, "seg", pl_seg_l, mask, "labeled", comm)

        zero = ce_l.new_zeros(())
        ce_u = dice_u = contrast_img = contrast_pix = itc = zero
        lam = 0.0
        if cfg.mode == "hermes" and unlabeled is not None:
            cls_u, seg_u = self._unlabeled_forward(unlabeled["weak"], unlabeled["strong"])
            cls_w, seg_w = cls_u.weak, seg_u.weak
            if self.teacher is not None:
                cls_w, seg_w = self._teacher_forward(self.teacher, unlabeled["weak"], step, logs)
            cls_source = cls_w.logits
            if self.alignment is not None:
                cls_source = self.alignment(cls_source, y, comm)
                log_alignment(logs, self.alignment)
            pl_cls = self._pseudo_label(cls_source, eta_cls)
            pl_seg = self._pseudo_label(seg_w.logits, eta_seg, pixels=True)
            log_unlabeled_pseudo(logs, pl_cls, pl_seg, unlabeled, comm, cfg.unlabeled_truth_stats)

            if w.ce_u > 0:
                ce_u = masked_cross_entropy(
                    cls_u.strong.logits, pl_cls.labels, pl_cls.reliable, comm
                )
            dice_mask, contrast_mask = self._pixel_masks(pl_seg, eta_seg)
            if w.dice_u > 0:
                dice_u = w.dice_u_scale * dice_loss(
                    seg_u.strong.logits,
                    pl_seg.labels,
                    weight=dice_mask,
                    comm=comm,
                    per_image=cfg.dice_per_image,
                )
            if step >= cfg.warmup_steps and w.contrast_img > 0:
                contrast_img = image_contrast(
                    cls_u.strong.projection,
                    cls_u.weak.projection,
                    pl_cls.labels,
                    pl_cls.reliable,
                    temperature=cfg.temperature,
                    base_temperature=cfg.base_temperature,
                    comm=comm,
                    bank=self.image_bank,
                    backend=self.backend,
                    fp32_precision=cfg.contrast_fp32_precision,
                )
            if step >= cfg.warmup_steps and w.contrast_pix > 0:
                contrast_pix = self._pixel_contrast(seg_u, pl_seg, contrast_mask)
            if w.itc > 0:
                z_cls, z_seg = cls_u.strong.consistency, seg_u.strong.consistency
                if cfg.itc_trains == "seg":
                    z_cls = z_cls.detach()
                elif cfg.itc_trains == "cls":
                    z_seg = z_seg.detach()
                itc = consistency_loss(z_cls, z_seg, comm)
                lam = consistency_weight(step, cfg.itc_every, cfg.itc_length)
            if self.image_bank is not None:
                self._enqueue(
                    self.image_bank, cls_u.weak.projection, pl_cls.labels, pl_cls.reliable
                )

        loss_cls = w.cls_total * (ce_l + w.ce_u * ce_u + w.contrast_img * contrast_img)
        loss_seg = w.seg_total * (seg_sup + w.dice_u * dice_u + w.contrast_pix * contrast_pix)
        if cfg.itc_trains == "cls":
            loss_cls = loss_cls + w.itc * lam * itc
        else:
            loss_seg = loss_seg + w.itc * lam * itc
        total = loss_cls + loss_seg

        terms = {
            "total": total,
            "cls": loss_cls,
            "seg": loss_seg,
            "ce_l": ce_l,
            "seg_sup": seg_sup,
            "seg_ce": seg_ce,
            "seg_dice": seg_dice,
            "ce_u": ce_u,
            "dice_u": dice_u,
            "contrast_img": contrast_img,
            "contrast_pix": contrast_pix,
            "itc": itc,
        }
        for name, value in terms.items():
            logs[f"loss/{name}"] = value.detach()
        logs["schedule/eta_cls"] = torch.tensor(eta_cls)
        logs["schedule/eta_seg"] = torch.tensor(eta_seg)
        logs["schedule/lambda"] = torch.tensor(lam)
        return total * comm.world_size, logs

    # ------------------------------------------------------------------ parts
    def _unlabeled_forward(self, weak: Tensor, strong: Tensor) -> tuple[_Views, _Views]:
        """Both branches on both views (no attention on unlabeled passes, as the public code)."""
        with frozen_bn_statistics(self.model, self.cfg.freeze_bn_unlabeled):
            return self._unlabeled_views(weak, strong)

    @torch.no_grad()
    def _teacher_forward(
        self, teacher: nn.Module, weak: Tensor, step: int, logs: dict[str, Tensor]
    ) -> tuple[Any, Any]:
        """The EMA teacher's prediction of the weak view, after its update for the student's
        ``step``-th optimiser step (at the start of the next forward, as Mean Teacher's, so
        that every rank applies the same update and a resumed run repeats it)."""
        decay = ema_update(teacher, self.model, step, self.cfg.teacher_decay) if step else 0.0
        logs["schedule/teacher_decay"] = torch.tensor(decay)
        return full_forward(teacher, weak)

    def _unlabeled_views(self, weak: Tensor, strong: Tensor) -> tuple[_Views, _Views]:
        if self.cfg.concat_views:
            b = weak.shape[0]
            xu = torch.cat([weak, strong], dim=0)
            sal = self.model(xu, mode="saliency")
            seg = self.model(xu, mode="seg", saliency=sal)
            cls = self.model(xu, mode="cls", seg_features=None)
            return _split(cls, b), _split(seg, b)
        outs = []
        for xv in (weak, strong):
            sal = self.model(xv, mode="saliency")
            outs.append(
                (
                    self.model(xv, mode="cls", seg_features=None),
                    self.model(xv, mode="seg", saliency=sal),
                )
            )
        return _Views(outs[0][0], outs[1][0]), _Views(outs[0][1], outs[1][1])

    def _pseudo_label(
        self, logits: Tensor, eta: float, pixels: bool = False
    ) -> DualThresholdOutput:
        """Dual threshold (or the fixed-threshold ablation) on detached logits; thresholds from
        the global batch's histogram, bounded below by ``seg_tau_min`` for ``pixels``."""
        cfg = self.cfg
        if cfg.pseudo_labels == "fixed":
            t = cfg.fixed_threshold
            return pseudo_labels(logits, self.comm, self.backend, eta=math.inf, tau=(t, t))
        tau = (cfg.tau_max, cfg.pixel_tau_min if pixels else cfg.tau_min)
        return pseudo_labels(logits, self.comm, self.backend, eta=eta, tau=tau)

    def _pixel_masks(self, pl: DualThresholdOutput, eta: float) -> tuple[Tensor, Tensor]:
        """The pixels ``Dice_u`` and the pixel contrast use (``cfg.pixel_reliability``)."""
        if self.cfg.pixel_reliability == "and":
            return pl.reliable, pl.reliable
        if self.cfg.pseudo_labels == "fixed":  # no entropy test: certain everywhere valid
            certain = torch.isfinite(pl.confidence)
        else:
            certain = pl.entropy < eta  # NaN (invalid) entries compare False
        confident = pl.confidence > pl.thresholds[pl.labels]
        return confident | certain, certain

    def _pixel_contrast(self, seg_u: _Views, pl: DualThresholdOutput, keep: Tensor) -> Tensor:
        cfg = self.cfg
        embedding = (seg_u.strong.embedding + seg_u.weak.embedding) / 2
        labels = torch.where(keep, pl.labels, torch.full_like(pl.labels, IGNORE))
        predictions = seg_u.strong.logits.detach().argmax(dim=1)
        loss, anchors, anchor_labels = pixel_contrast(
            embedding,
            labels,
            predictions,
            max_samples=cfg.max_samples,
            max_views=cfg.max_views,
            num_classes=self.seg_classes,
            temperature=cfg.temperature,
            base_temperature=cfg.base_temperature,
            bank=self.pixel_bank,
            backend=self.backend,
            fp32_precision=cfg.contrast_fp32_precision,
        )
        if self.pixel_bank is not None:  # every rank enqueues (a collective), even with no anchors
            self._enqueue(self.pixel_bank, anchors, anchor_labels, None)
        # Per-rank anchors: the global value is the mean of the ranks' losses.
        return global_sum(loss, self.comm) / self.comm.world_size

    def _enqueue(
        self, bank: ClassQueues, feats: Tensor, labels: Tensor, keep: Tensor | None
    ) -> None:
        """Enqueue every rank's features, so that the queues stay identical on every rank."""
        feats, labels = feats.detach(), labels.detach()
        if keep is None:
            keep = torch.ones_like(labels, dtype=torch.bool)
        if self.comm.world_size > 1:
            feats = self.comm.all_gather(feats)
            labels = self.comm.all_gather(labels)
            keep = self.comm.all_gather(keep.to(torch.uint8)).bool()
        bank.enqueue(feats, labels, keep)


def full_forward(model: nn.Module, x: Tensor) -> tuple[Any, Any]:
    """Both branches as at test time: saliency -> segmentation -> classification with the
    segmentation features entering the attention (when ``model.cfg.attention``). Returns
    ``(ClsOutput, SegOutput)``; gradients flow as the model's detach settings say."""
    sal = model(x, mode="saliency")
    seg = model(x, mode="seg", saliency=sal)
    features = seg.features if model.cfg.attention and seg.features else None
    return model(x, mode="cls", seg_features=features), seg


def supervised_terms(
    cls_logits: Tensor,
    seg_logits: Tensor,
    label: Tensor,
    mask: Tensor,
    comm: Comm,
    per_image: bool = False,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The labeled losses every method shares: ``(CE_l, segmentation CE, segmentation Dice)``
    over the global batch (the Dice per image with ``per_image``, see :func:`dice_loss`; the
    image labels of ``CE_l`` smoothed by ``label_smoothing``)."""
    ce_l = cross_entropy_mean(cls_logits, label, comm, label_smoothing)
    seg_dice = dice_loss(seg_logits, mask, comm=comm, per_image=per_image)
    return ce_l, cross_entropy_mean(seg_logits, mask, comm), seg_dice


def pseudo_labels(
    logits: Tensor, comm: Comm, backend: str | None, *, eta: float, tau: tuple[float, float]
) -> DualThresholdOutput:
    """:func:`hermes.ops.dual_threshold` on detached logits with ``tau = (tau_max, tau_min)``,
    the class thresholds from the global batch's histogram (``eta = inf`` and equal bounds: a
    fixed confidence threshold)."""
    hook = comm.all_reduce_sum if comm.world_size > 1 else None
    return dual_threshold(
        logits.detach(),
        eta=eta,
        tau_max=tau[0],
        tau_min=tau[1],
        backend=backend,
        histogram_hook=hook,
    )


def log_unlabeled_pseudo(
    logs: dict[str, Tensor],
    pl_cls: DualThresholdOutput,
    pl_seg: DualThresholdOutput,
    unlabeled: Batch,
    comm: Comm,
    truth_stats: bool,
) -> None:
    """The unlabeled stream's pseudo-label statistics, and, with ``truth_stats`` and when the
    batch carries them, their accuracy against the true labels and masks (monitoring only)."""
    log_pseudo(logs, "cls", pl_cls)
    log_pseudo(logs, "seg", pl_seg)
    if not truth_stats:
        return
    with torch.no_grad():
        if "label" in unlabeled:
            log_truth(logs, "cls", pl_cls, unlabeled["label"].long(), "unlabeled", comm)
        if "mask" in unlabeled:
            log_truth(logs, "seg", pl_seg, unlabeled["mask"].long(), "unlabeled", comm)


def log_alignment(logs: dict[str, Tensor], alignment: DistributionAlignment) -> None:
    """The alignment's running averages: labeled class frequencies and mean prediction."""
    for c in range(alignment.num_classes):
        logs[f"pseudo_cls/align_target_{c}"] = alignment.target[c].detach()
        logs[f"pseudo_cls/align_source_{c}"] = alignment.source[c].detach()


def log_pseudo(logs: dict[str, Tensor], task: str, out: DualThresholdOutput) -> None:
    """Thresholds, histogram fractions, kept fractions per class, mean confidence/entropy."""
    s = out.stats
    hist = s.histogram.float()
    frac = hist / hist.sum().clamp(min=1)
    per_class = {
        "threshold": out.thresholds,
        "label_fraction": frac,
        "kept_confident": s.kept_confident,
        "kept_certain": s.kept_certain,
        "kept_reliable": s.kept_reliable,
    }
    for name, values in per_class.items():
        for c, v in enumerate(values.detach().unbind(0)):
            logs[f"pseudo_{task}/{name}_{c}"] = v
    logs[f"pseudo_{task}/kept"] = (s.kept_reliable * frac).sum().detach()
    logs[f"pseudo_{task}/mean_confidence"] = s.mean_confidence.detach()
    logs[f"pseudo_{task}/mean_entropy"] = s.mean_entropy.detach()


TRUTH_STATS_PER_CLASS = ("kept", "acc_kept", "acc_dropped", "precision_kept")
"""The per-true-class statistics :func:`log_truth` logs, as ``pseudo_<task>/<name>_<where>_<c>``."""


def log_truth(
    logs: dict[str, Tensor],
    task: str,
    out: DualThresholdOutput,
    truth: Tensor,
    where: str,
    comm: Comm,
) -> None:
    """Pseudo-label accuracy of the kept and the dropped entries against known truth, overall
    and per true class ``c`` (images for ``cls``, pixels for ``seg``):

    - ``acc_kept_<where>`` / ``acc_dropped_<where>``: the fraction right among the kept / the
      dropped entries; ``kept_<where>``: the fraction kept;
    - ``acc_kept_<where>_<c>``, ``acc_dropped_<where>_<c>``, ``kept_<where>_<c>``: the same
      among the entries whose true class is ``c``;
    - ``precision_kept_<where>_<c>``: the fraction right among the kept entries pseudo-labeled
      ``c``.

    A fraction of no entries is NaN."""
    valid = torch.isfinite(out.confidence)
    correct = out.labels == truth
    kept = out.reliable & valid
    dropped = ~out.reliable & valid
    num_classes = out.thresholds.numel()
    counts = [(correct & kept).sum(), kept.sum(), (correct & dropped).sum(), dropped.sum()]
    counts.append(valid.sum())
    for c in range(num_classes):
        true_c, labeled_c = truth == c, out.labels == c
        counts += [
            (correct & kept & true_c).sum(),
            (kept & true_c).sum(),
            (correct & dropped & true_c).sum(),
            (dropped & true_c).sum(),
            (valid & true_c).sum(),
            (kept & labeled_c).sum(),
        ]
    sums = torch.stack(counts).float()
    if comm.world_size > 1:
        sums = comm.all_reduce_sum(sums)
    nan = torch.full_like(sums[0], math.nan)

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), nan)

    logs[f"pseudo_{task}/acc_kept_{where}"] = ratio(sums[0], sums[1])
    logs[f"pseudo_{task}/acc_dropped_{where}"] = ratio(sums[2], sums[3])
    logs[f"pseudo_{task}/kept_{where}"] = sums[1] / sums[4].clamp(min=1)
    for c in range(num_classes):
        right, kept_c, right_dropped, dropped_c, all_c, labeled_c = sums[5 + 6 * c : 11 + 6 * c]
        values = (
            ratio(kept_c, all_c),
            ratio(right, kept_c),
            ratio(right_dropped, dropped_c),
            ratio(right, labeled_c),
        )
        for name, value in zip(TRUTH_STATS_PER_CLASS, values, strict=True):
            logs[f"pseudo_{task}/{name}_{where}_{c}"] = value
