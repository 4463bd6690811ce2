"""The method's loss terms that are not contrastive (the paper's losses).

Every reduction goes through :func:`global_sum`, so that under data parallelism each term has
the value of the *global* batch on every rank, and its gradient with respect to this rank's
tensors is the gradient of the global-batch loss with respect to them (see
:class:`hermes.method.HermesMethod` for how the total is scaled for gradient averaging). With
:class:`hermes.comm.LocalComm` every helper is the plain single-process formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hermes.comm import Comm, LocalComm

DICE_EPS = 1e-5
_LOCAL = LocalComm()


def global_sum(x: Tensor, comm: Comm = _LOCAL) -> Tensor:
    """Sum of ``x`` over ranks in value; gradient flows to this rank's ``x`` only.

    ``x + (all_reduce_sum(x) - x)`` with the bracket detached: the global total's derivative
    with respect to this rank's summand is 1, which is exactly what the autograd of a local
    ``x`` gives.
    """
    if comm.world_size == 1:
        return x
    detached = x.detach()
    return x + (comm.all_reduce_sum(detached.clone()) - detached)


def global_mean(total: Tensor, count: int | Tensor, comm: Comm = _LOCAL) -> Tensor:
    """``global_sum(total) / global_sum(count)``; ``count`` is not differentiated."""
    if isinstance(count, Tensor):
        count = (
            comm.all_reduce_sum(count.detach().float().clone()) if comm.world_size > 1 else count
        )
        return global_sum(total, comm) / count.clamp(min=1)
    return global_sum(total, comm) / max(count * comm.world_size, 1)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    comm: Comm = _LOCAL,
    eps: float = DICE_EPS,
    per_image: bool = False,
) -> Tensor:
    """Lesion Dice loss, over the whole batch or per image.

    ``1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps)`` with ``p`` the softmax of the
    lesion channel (index 1) and ``t = [target == 1]``; with ``weight`` (the reliable mask)
    both ``p`` and ``t`` are multiplied by it, i.e. the sums run over the weighted pixels only.
    By default (the paper's) the sums run over every pixel of the global batch, so that large
    lesions outweigh small ones; with ``per_image`` they run over each image's pixels and the
    loss is the mean of the images' losses over the global batch, which weighs every image
    alike (the metric the evaluation reports). There an image without lesion pixels scores 0
    when it predicts none and about 1 otherwise, and one without weighted pixels scores 0.

    Shapes:
        logits: (B, 2, H, W) (more classes: channel 1 is the lesion); target: (B, H, W) int64;
        weight: (B, H, W) bool or float. Returns a 0-dim fp32 tensor.
    """
    p = torch.softmax(logits.float(), dim=1)[:, 1]
    t = (target == 1).float()
    if weight is not None:
        w = weight.float()
        p, t = p * w, t * w
    if per_image:
        inter = (p * t).flatten(1).sum(1)
        union = (p * p + t * t).flatten(1).sum(1)
        losses = 1.0 - (2.0 * inter + eps) / (union + eps)
        return global_mean(losses.sum(), losses.numel(), comm)
    inter = global_sum((p * t).sum(), comm)
    union = global_sum((p * p).sum() + (t * t).sum(), comm)
    return 1.0 - (2.0 * inter + eps) / (union + eps)


def cross_entropy_mean(
    logits: Tensor, target: Tensor, comm: Comm = _LOCAL, label_smoothing: float = 0.0
) -> Tensor:
    """Mean cross-entropy over every sample (or pixel) of the global batch, against the target
    class smoothed by ``label_smoothing`` (``1 - s`` on the class plus ``s / C`` everywhere, as
    :func:`torch.nn.functional.cross_entropy`).

    Shapes: logits (B, C) or (B, C, H, W); target (B,) or (B, H, W) int64. Returns 0-dim fp32.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="sum", label_smoothing=label_smoothing)
    return global_mean(ce, target.numel(), comm)


def masked_cross_entropy(
    logits: Tensor, target: Tensor, mask: Tensor, comm: Comm = _LOCAL
) -> Tensor:
    """Cross-entropy times the mask, averaged over the *whole* batch (masked entries count as 0).

    Shapes: logits (B, C) or (B, C, H, W); target and mask of the logits' shape without the
    class dimension (int64; bool or float). Returns 0-dim fp32.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return global_mean((ce * mask.float()).sum(), target.numel(), comm)


def consistency_loss(z_cls: Tensor, z_seg: Tensor, comm: Comm = _LOCAL) -> Tensor:
    """Inter-task consistency ``1 - mean cos(normalize(z_cls), normalize(z_seg))``.

    Shapes: z_cls, z_seg (B, D). The caller detaches ``z_cls`` when each branch must learn from
    its own loss only (the detached junctions). Returns 0-dim fp32.
    """
    cos = F.cosine_similarity(z_cls.float(), z_seg.float(), dim=1, eps=1e-8)
    return 1.0 - global_mean(cos.sum(), cos.numel(), comm)


def softmax_mse(student: Tensor, teacher: Tensor, comm: Comm = _LOCAL) -> Tensor:
    """Mean Teacher's consistency: the squared difference of the two softmaxes, averaged over
    every sample (or pixel) and class of the global batch; the teacher's side is detached.

    Shapes: student, teacher (B, C) or (B, C, H, W) logits. Returns 0-dim fp32.
    """
    p = torch.softmax(student.float(), dim=1)
    q = torch.softmax(teacher.detach().float(), dim=1)
    return global_mean(((p - q) ** 2).sum(), p.numel(), comm)
