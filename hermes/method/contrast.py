"""The two contrastive losses of the method (image-level and pixel-level contrast).

Both go through :func:`hermes.ops.supcon_loss`, so fused backends serve them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hermes.comm import Comm, LocalComm
from hermes.method.losses import global_sum
from hermes.method.memory import ClassQueues
from hermes.ops import supcon_loss

IGNORE = -1
_LOCAL = LocalComm()


def image_contrast(
    strong: Tensor,
    weak: Tensor,
    labels: Tensor,
    reliable: Tensor,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    comm: Comm = _LOCAL,
    bank: ClassQueues | None = None,
    backend: str | None = None,
    fp32_precision: str = "ieee",
) -> Tensor:
    """SupCon over the (strong, weak) projections with pseudo-labels, weighted by reliability.

    Every view of this rank is an anchor; the contrast set is every rank's views
    (``comm.all_gather``, this rank's rows at ``self_offset = rank * 2B``) plus the memory bank.
    The per-anchor loss times the sample's reliable mask is summed and divided by the GLOBAL
    number of anchors that have a positive, then turned into the global value with
    :func:`global_sum`: its gradient on each rank is that rank's share of the global loss's
    gradient (the all-gather's backward brings the other ranks' use of this rank's rows).

    ``fp32_precision``: how fp32 features are multiplied on a GPU
    (:func:`hermes.ops.supcon_loss`).

    Shapes:
        strong, weak: (B, d) L2-normalised; labels: (B,) int64; reliable: (B,) bool or float.
    Returns:
        0-dim fp32 loss.
    """
    b = strong.shape[0]
    anchors = torch.cat([strong, weak], dim=0)
    anchor_labels = labels.repeat(2)
    weights = reliable.float().repeat(2)
    if comm.world_size > 1:
        contrasts = comm.all_gather(anchors)
        contrast_labels = comm.all_gather(anchor_labels)
        if contrasts.shape[0] != 2 * b * comm.world_size:
            raise ValueError(
                "image_contrast: every rank must have the same batch size, gathered "
                f"{contrasts.shape[0]} rows for {comm.world_size} ranks of {2 * b}"
            )
        offset = comm.rank * 2 * b
    else:
        contrasts, contrast_labels, offset = anchors, anchor_labels, 0
    if bank is not None:
        bank_features, bank_labels = bank.filled()
        contrasts = torch.cat([contrasts, bank_features.to(contrasts.dtype)], dim=0)
        contrast_labels = torch.cat([contrast_labels, bank_labels])
    per_anchor = supcon_loss(
        anchors,
        anchor_labels,
        contrasts,
        contrast_labels,
        temperature=temperature,
        base_temperature=base_temperature,
        weights=weights,
        reduction="none",
        backend=backend,
        self_offset=offset,
        fp32_precision=fp32_precision,
    )
    # An anchor has a positive when its class occurs in the contrast set besides itself.
    same = (anchor_labels[:, None] == contrast_labels[None, :]).sum(dim=1)
    has_positive = (same > 1).float()
    count = has_positive.sum()
    if comm.world_size > 1:
        count = comm.all_reduce_sum(count.detach().clone())
    return global_sum(per_anchor.sum(), comm) / count.clamp(min=1)


def sample_pixel_anchors(
    embedding: Tensor,
    labels: Tensor,
    predictions: Tensor,
    *,
    max_samples: int = 1024,
    max_views: int = 100,
    num_classes: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """ContrastiveSeg hard-anchor sampling.

    Per image and per class present with more than ``max_views`` labelled pixels,
    ``n_view = min(max_samples // n_anchor_classes, max_views)`` pixels: half *hard* (label c,
    predicted not c) and half *easy* (label c, predicted c); when one kind is short, the other
    fills in. Selection is uniformly random (global torch RNG unless ``generator``).

    The counts decide the sizes, so they are brought to the host once (one synchronisation,
    inherent to the sampling: ContrastiveSeg's output size depends on them);
    the selection itself stays on the device (random keys and ``topk``).

    Shapes:
        embedding: (B, d, h, w); labels: (B, h, w) int64 with ``IGNORE`` (-1) for unlabelled;
        predictions: (B, h, w) int64; classes are ``0 .. num_classes - 1``.
    Returns:
        features (A, n_view, d) and their classes (A,) int64; ``A = 0`` when no class has enough
        pixels (then features is (0, 0, d)).
    """
    b, d = embedding.shape[:2]
    feats = embedding.flatten(2).transpose(1, 2)  # (B, hw, d)
    y = labels.flatten(1)
    pred = predictions.flatten(1)
    classes = torch.arange(num_classes, device=y.device)
    is_c = y[:, None, :] == classes[None, :, None]  # (B, C, hw)
    hard = is_c & (pred[:, None, :] != classes[None, :, None])
    easy = is_c & ~hard
    counts = torch.stack([is_c.sum(-1), hard.sum(-1), easy.sum(-1)], dim=-1).cpu()  # the sync
    slots = [
        (i, c) for i in range(b) for c in range(num_classes) if int(counts[i, c, 0]) > max_views
    ]
    if not slots:
        return embedding.new_zeros(0, 0, d), torch.zeros(0, dtype=torch.int64, device=y.device)
    n_view = max(min(max_samples // len(slots), max_views), 1)
    keys = torch.rand(y.shape, device=y.device, generator=generator)
    chosen, chosen_labels = [], []
    for i, c in slots:
        num_hard, num_easy = int(counts[i, c, 1]), int(counts[i, c, 2])
        if num_hard >= n_view / 2 and num_easy >= n_view / 2:
            keep_hard = n_view // 2
            keep_easy = n_view - keep_hard
        elif num_hard >= n_view / 2:
            keep_easy = num_easy
            keep_hard = n_view - keep_easy
        else:
            keep_hard = num_hard
            keep_easy = n_view - keep_hard
        index = []
        if keep_hard:
            index.append(torch.where(hard[i, c], keys[i], -1.0).topk(keep_hard).indices)
        if keep_easy:
            index.append(torch.where(easy[i, c], keys[i], -1.0).topk(keep_easy).indices)
        chosen.append(feats[i, torch.cat(index)])
        chosen_labels.append(c)
    features = torch.stack(chosen)
    return features, torch.tensor(chosen_labels, dtype=torch.int64, device=y.device)


def pixel_contrast(
    embedding: Tensor,
    labels: Tensor,
    predictions: Tensor,
    *,
    max_samples: int = 1024,
    max_views: int = 100,
    num_classes: int = 2,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    bank: ClassQueues | None = None,
    backend: str | None = None,
    fp32_precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor]:
    """ContrastiveSeg pixel contrast: hard-anchor sampling, then SupCon over anchors x views with
    ``denominator="pos_plus_neg"`` (own positive plus all negatives), averaged over the anchors.

    ``labels`` and ``predictions`` are at input resolution and are resized (nearest) to the
    embedding grid here. ``fp32_precision``: as in :func:`hermes.ops.supcon_loss`.

    Shapes:
        embedding: (B, d, h, w); labels: (B, H, W) int64 with -1 = ignore; predictions (B, H, W).
    Returns:
        (loss 0-dim fp32, sampled anchor features (n, d) detached, their labels (n,)) — the last
        two for the memory bank. The loss is 0 (with a graph) when nothing is sampled.
    """
    size = embedding.shape[-2:]
    y = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    p = F.interpolate(predictions[:, None].float(), size=size, mode="nearest")[:, 0].long()
    feats, classes = sample_pixel_anchors(
        embedding, y, p, max_samples=max_samples, max_views=max_views, num_classes=num_classes
    )
    d = embedding.shape[1]
    if feats.shape[0] == 0:
        empty = embedding.new_zeros(0, d)
        return embedding.sum() * 0.0, empty, classes
    n_view = feats.shape[1]
    anchors = feats.transpose(0, 1).reshape(-1, d)  # view-major, as ContrastiveSeg
    anchor_labels = classes.repeat(n_view)
    common = dict(
        temperature=temperature,
        base_temperature=base_temperature,
        denominator="pos_plus_neg",
        backend=backend,
        fp32_precision=fp32_precision,
    )
    if bank is None:
        loss = supcon_loss(anchors, anchor_labels, **common)
    else:
        bank_features, bank_labels = bank.filled()
        loss = supcon_loss(
            anchors,
            anchor_labels,
            torch.cat([anchors, bank_features.to(anchors.dtype)]),
            torch.cat([anchor_labels, bank_labels]),
            self_offset=0,
            **common,
        )
    return loss, anchors.detach(), anchor_labels
