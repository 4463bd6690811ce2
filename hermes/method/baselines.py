"""The standard semi-supervised baselines beside Hermes, for both branches: Mean Teacher and
FixMatch.

Each is an ``nn.Module`` with :class:`HermesMethod`'s interface (``forward(labeled, unlabeled,
step, total_steps) -> (loss, logs)``, the networks called only through ``model(x, mode=...)``),
so the same trainer, checkpoints and DeepSpeed engine run them. Both use the supervised losses
of Hermes on the labeled batch (same weights, same full forward with saliency and attention)
and add one unlabeled term per branch::

    L = cls_total * (CE_l + lambda_cls * U_cls) + seg_total * (L_seg_sup + lambda_seg * U_seg)

The unlabeled passes run the whole model (saliency, segmentation, then classification with
attention), as at test time, and, with ``method.freeze_bn_unlabeled``, leave BatchNorm's
running statistics to the labeled pass. :func:`build_method` picks the method from
``MethodConfig.mode``. Under data parallelism every term has the global batch's value, as in
:class:`HermesMethod` (and the returned loss is scaled by the world size the same way).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from hermes.comm import Comm, LocalComm
from hermes.method.config import MethodConfig
from hermes.method.losses import masked_cross_entropy, softmax_mse
from hermes.method.method import (
    HermesMethod,
    full_forward,
    log_unlabeled_pseudo,
    pseudo_labels,
    supervised_terms,
)
from hermes.method.schedules import rampup
from hermes.method.teacher import ema_update, frozen_copy
from hermes.models.layers import frozen_bn_statistics

Batch = dict[str, Any]


class _Baseline(nn.Module):
    """The labeled part shared by the baselines; subclasses add :meth:`unlabeled_terms`."""

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

    def forward(
        self,
        labeled: Batch,
        unlabeled: Batch | None = None,
        step: int = 0,
        total_steps: int = 1,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step's loss; called once per optimiser step, ``step`` being the number
        of steps already taken (as :class:`HermesMethod`)."""
        w, comm = self.cfg.weights, self.comm
        x, mask, y = labeled["image"], labeled["mask"].long(), labeled["label"].long()
        cls_l, seg_l = full_forward(self.model, x)
        ce_l, seg_ce, seg_dice = supervised_terms(
            cls_l.logits,
            seg_l.logits,
            y,
            mask,
            comm,
            per_image=self.cfg.dice_per_image,
            label_smoothing=self.cfg.label_smoothing,
        )
        seg_sup = w.seg_ce * seg_ce + w.seg_dice * seg_dice

        logs: dict[str, Tensor] = {}
        u_cls = u_seg = ce_l.new_zeros(())
        lam_cls = lam_seg = 0.0
        if unlabeled is not None:
            u_cls, u_seg, lam_cls, lam_seg = self.unlabeled_terms(
                unlabeled, step, total_steps, logs
            )
        loss_cls = w.cls_total * (ce_l + lam_cls * u_cls)
        loss_seg = w.seg_total * (seg_sup + lam_seg * u_seg)
        total = loss_cls + loss_seg
        terms = {
            "total": total,
            "cls": loss_cls,
            "seg": loss_seg,
            "ce_l": ce_l,
            "seg_sup": seg_sup,
            "seg_ce": seg_ce,
            "seg_dice": seg_dice,
            "unsup_cls": u_cls,
            "unsup_seg": u_seg,
        }
        for name, value in terms.items():
            logs[f"loss/{name}"] = value.detach()
        logs["schedule/weight_cls"] = torch.tensor(lam_cls)
        logs["schedule/weight_seg"] = torch.tensor(lam_seg)
        return total * comm.world_size, logs

    def unlabeled_terms(
        self, unlabeled: Batch, step: int, total_steps: int, logs: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, float, float]:
        """``(U_cls, U_seg, lambda_cls, lambda_seg)`` of an unlabeled batch."""
        raise NotImplementedError

    def _student(self, x: Tensor) -> tuple[Any, Any]:
        with frozen_bn_statistics(self.model, self.cfg.freeze_bn_unlabeled):
            return full_forward(self.model, x)


class MeanTeacherMethod(_Baseline):
    """Mean Teacher (Tarvainen & Valpola, 2017) for both branches.

    The teacher (``self.teacher``, a copy of the whole two-branch model, no gradients) is the
    exponential moving average of the student's weights; BatchNorm running statistics are its
    own (updated by its train-mode forward), as in the original. The EMA update for the
    student's ``t``-th optimiser step happens at the start of the next ``forward`` (``step =
    t``), which gives the original's sequence without a hook in the trainer and keeps the
    teacher identical on every rank (every rank applies the same update to the same weights).
    The teacher is part of the state dict, so checkpoints resume exactly. The student (``model``)
    is the network that is evaluated and exported, as in SSL4MIS.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: MethodConfig | None = None,
        comm: Comm | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(model, cfg, comm, backend)
        self.teacher = frozen_copy(model)

    def update_teacher(self, step: int) -> float:
        """The EMA update after the student's ``step``-th optimiser step (:func:`ema_update`
        with ``mean_teacher.ema_decay``). Returns the decay used."""
        return ema_update(self.teacher, self.model, step, self.cfg.mean_teacher.ema_decay)

    def unlabeled_terms(
        self, unlabeled: Batch, step: int, total_steps: int, logs: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, float, float]:
        mt = self.cfg.mean_teacher
        decay = self.update_teacher(step) if step > 0 else 0.0
        with torch.no_grad():
            cls_t, seg_t = full_forward(self.teacher, unlabeled["weak"])
        cls_s, seg_s = self._student(unlabeled["strong"])
        u_cls = softmax_mse(cls_s.logits, cls_t.logits, self.comm)
        u_seg = softmax_mse(seg_s.logits, seg_t.logits, self.comm)
        ramp = rampup(step, mt.rampup * total_steps)
        logs["schedule/ema_decay"] = torch.tensor(decay)
        if self.cfg.unlabeled_truth_stats and "label" in unlabeled:
            with torch.no_grad():
                right = (cls_t.logits.argmax(dim=1) == unlabeled["label"].long()).float()
                sums = torch.stack([right.sum(), right.new_tensor(float(right.numel()))])
                if self.comm.world_size > 1:
                    sums = self.comm.all_reduce_sum(sums)
                logs["teacher/acc_cls_unlabeled"] = sums[0] / sums[1].clamp(min=1)
        return u_cls, u_seg, mt.weight_cls * ramp, mt.weight_seg * ramp


class FixMatchMethod(_Baseline):
    """FixMatch (Sohn et al., 2020) for both branches.

    The student's prediction on the weak view (no gradient, train mode) gives pseudo-labels,
    kept where the confidence exceeds ``fixmatch.threshold`` (:func:`hermes.ops.dual_threshold`
    with the entropy test off and equal class thresholds: exactly a fixed confidence
    threshold, strict ``>``); the cross-entropy on the strong view is averaged over every
    unlabeled image (classification) and every unlabeled pixel (segmentation, UniMatch's
    baseline form), the dropped entries counting as zero.
    """

    def unlabeled_terms(
        self, unlabeled: Batch, step: int, total_steps: int, logs: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, float, float]:
        fm = self.cfg.fixmatch
        with torch.no_grad():
            cls_w, seg_w = self._student(unlabeled["weak"])
        t = (fm.threshold, fm.threshold)
        pl_cls = pseudo_labels(cls_w.logits, self.comm, self.backend, eta=math.inf, tau=t)
        pl_seg = pseudo_labels(seg_w.logits, self.comm, self.backend, eta=math.inf, tau=t)
        truth_stats = self.cfg.unlabeled_truth_stats
        log_unlabeled_pseudo(logs, pl_cls, pl_seg, unlabeled, self.comm, truth_stats)
        cls_s, seg_s = self._student(unlabeled["strong"])
        u_cls = masked_cross_entropy(cls_s.logits, pl_cls.labels, pl_cls.reliable, self.comm)
        u_seg = masked_cross_entropy(seg_s.logits, pl_seg.labels, pl_seg.reliable, self.comm)
        return u_cls, u_seg, fm.weight_cls, fm.weight_seg


METHODS: dict[str, type[nn.Module]] = {
    "hermes": HermesMethod,
    "supervised": HermesMethod,
    "mean_teacher": MeanTeacherMethod,
    "fixmatch": FixMatchMethod,
}
"""The module that runs each ``MethodConfig.mode``."""


def build_method(
    model: nn.Module,
    cfg: MethodConfig | None = None,
    comm: Comm | None = None,
    backend: str | None = None,
) -> nn.Module:
    """The method module of ``cfg.mode`` around ``model`` (see :data:`METHODS`)."""
    cfg = cfg if cfg is not None else MethodConfig()
    return METHODS[cfg.mode](model, cfg, comm=comm, backend=backend)
