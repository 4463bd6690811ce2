"""Supervised contrastive loss (SupCon, Khosla et al. 2020) and its ContrastiveSeg form.

The PyTorch reference here is the specification every fused backend is tested against. It
materialises the N x M similarity matrix; the fused backends do not.

Every backend (the ``torch`` one is :func:`per_anchor_reference`) returns only the unweighted
per-anchor losses and positive counts; :func:`supcon_loss` checks the inputs and applies the
non-finite rule, the weights and the reduction (:func:`reduce_loss`) once for all of them.

Non-finite features (NaN, +Inf or -Inf), in every backend: anchor ``i``'s loss is NaN when its
own features or those of any contrast (the anchors themselves without ``contrasts``) hold a
non-finite value, whether or not it has a positive; every other anchor's loss is unaffected.
A NaN anchor loss makes the ``"mean"`` NaN (whatever its weight). Gradients are then not
defined; skip such a step.

Empty inputs (N = 0, M = 0 or d = 0) are accepted by every backend: N = 0 gives an empty
``"none"`` result and a ``"mean"`` of 0; M = 0 leaves every anchor without a positive (loss 0).

Precision of fp32 features (``fp32_precision``, used by the ``triton`` backend on a GPU; every
other backend, and Triton's CPU interpreter, multiplies in IEEE fp32 whatever it says):

- ``"ieee"`` (default): fp32 products on the CUDA cores. Forward within 1e-5 of the fp32
  reference relative to the largest loss, gradients within 1e-4 (the fp32 contract).
- ``"tf32"``: tensor cores on TF32 operands, products accumulated in fp32 (an H100's data
  sheet: 494 dense TF32 TFLOP/s against 67 fp32 TFLOP/s; not measured here). The tensor cores read an fp32 operand's sign, exponent and top 10 mantissa
  bits (the other 13 are dropped, not rounded), so each factor is off by less than 2**-10 of its
  value and each product ``a_k b_k`` by less than about 2**-9 of ``|a_k b_k|``. A similarity
  ``s_ij = a_i . b_j / t`` of unit-norm features is then off by less than about
  ``2**-9 / t`` (Cauchy-Schwarz: ``sum_k |a_k b_k| <= 1``), 0.028 at t = 0.07; the loss is
  1-Lipschitz in the similarities (log-sum-exp and means of them), so ``l_i`` is off by less
  than ``2 * 2**-9 / base_temperature`` in the worst case, with every rounding error of one
  sign. Rounding errors of both signs cancel in practice: measured with the kernels under
  Triton's interpreter with the TF32 truncation emulated (N = 256, d = 128, t = 0.07), the
  loss is within 3e-4 of the fp64 reference relative to the largest loss and the gradients
  within 1.5e-3 relative to the largest gradient; the tests hold it to 1e-3 and 1e-2, on the
  CPU and on a GPU at N = 4096. This is the accuracy class of bf16 features (an 8-bit
  mantissa): use it where the features come from a bf16 autocast network anyway.

Half-precision features (fp16, bf16) always go through the tensor cores in their own dtype,
with fp32 accumulation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hermes.ops import dispatch

DENOMINATORS = ("all", "pos_plus_neg")
REDUCTIONS = ("mean", "none")
# How the fused GPU kernels multiply fp32 features (the ``fp32_precision`` argument):
FP32_PRECISIONS = ("ieee", "tf32")


def nonfinite_to_nan(loss: Tensor, anchors: Tensor, contrasts: Tensor | None) -> Tensor:
    """The non-finite rule of every backend (see the module docstring), on the device.

    Shapes: loss (N,) per-anchor losses, anchors (N, d), contrasts (M, d) or ``None`` (the
    anchors). Returns ``loss`` with NaN where anchor ``i`` or any contrast is non-finite.
    """
    b = anchors if contrasts is None else contrasts
    bad = ~torch.isfinite(anchors).all(dim=1) | ~torch.isfinite(b).all()
    return torch.where(bad, torch.full_like(loss, float("nan")), loss)


def per_anchor_reference(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor | None,
    contrast_labels: Tensor | None,
    *,
    temperature: float,
    base_temperature: float,
    denominator: str,
    self_offset: int | None,
    fp32_precision: str = "ieee",
) -> tuple[Tensor, Tensor]:
    """The ``torch`` backend: unweighted per-anchor losses with the full similarity matrix.

    Computed in fp32 (in fp64 for fp64 features, a reference for the fp32 kernels at scale).
    ``fp32_precision`` is accepted for the common signature of the backends and not used: the
    reference multiplies with ``torch.matmul`` in fp32 (on a GPU, as PyTorch's own fp32 matmul
    precision setting says; IEEE by default).

    Shapes: anchors (N, d), labels (N,), contrasts (M, d), contrast_labels (M,).
    Returns ``l_i`` (N,) (0 when anchor i has no positive) and ``|P(i)|`` (N,) int64; the
    semantics are :func:`supcon_loss_reference`'s.
    """
    compute = torch.float64 if anchors.dtype == torch.float64 else torch.float32
    a = anchors.to(compute)
    if contrasts is None:
        b, yb, self_offset = a, labels, 0
    else:
        b, yb = contrasts.to(compute), contrast_labels
    n, m = a.shape[0], b.shape[0]
    logits = a @ b.T / temperature  # (N, M)

    not_self = torch.ones(n, m, dtype=torch.bool, device=a.device)
    if self_offset is not None:
        rows = torch.arange(n, device=a.device)
        cols = rows + self_offset
        inside = (cols >= 0) & (cols < m)
        not_self[rows[inside], cols[inside]] = False
    same = labels[:, None] == yb[None, :]
    pos = same & not_self

    neg_inf = torch.tensor(float("-inf"), device=a.device)
    if denominator == "all":
        log_denominator = torch.logsumexp(torch.where(not_self, logits, neg_inf), dim=1)
        log_prob = logits - log_denominator[:, None]
    else:
        neg_lse = torch.logsumexp(torch.where(~same, logits, neg_inf), dim=1)
        log_prob = logits - torch.logaddexp(logits, neg_lse[:, None])

    n_pos = pos.sum(dim=1)
    sum_log_prob_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    loss = -(temperature / base_temperature) * sum_log_prob_pos / n_pos.clamp(min=1)
    return torch.where(n_pos > 0, loss, torch.zeros_like(loss)), n_pos


def reduce_loss(
    loss: Tensor,
    num_pos: Tensor,
    anchors: Tensor,
    contrasts: Tensor | None,
    weights: Tensor | None,
    reduction: str,
) -> Tensor:
    """What the public op does with every backend's outputs: the non-finite rule, the weights
    and the reduction (differentiable in ``loss`` and ``weights``).

    Shapes: loss (N,) per-anchor losses, num_pos (N,) positives per anchor, anchors (N, d),
    contrasts (M, d) or ``None``, weights (N,) or ``None``. Returns (N,) fp32 for ``"none"``,
    else a 0-dim fp32 tensor.
    """
    loss = nonfinite_to_nan(loss, anchors, contrasts)
    if weights is not None:
        loss = loss * weights.to(loss.dtype)
    if reduction == "none":
        return loss.float()
    return (loss.sum() / (num_pos > 0).sum().clamp(min=1)).float()


def supcon_loss_reference(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor | None = None,
    contrast_labels: Tensor | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    weights: Tensor | None = None,
    denominator: str = "all",
    reduction: str = "mean",
    self_offset: int | None = None,
    fp32_precision: str = "ieee",
) -> Tensor:
    """Reference SupCon loss, computed with the full similarity matrix in fp32 (in fp64 for
    fp64 features, a reference for the fp32 kernels at scale); the result is fp32.

    ``fp32_precision`` is accepted for the common signature of the backends and not used.

    Shapes:
        anchors: (N, d), labels: (N,), contrasts: (M, d), contrast_labels: (M,),
        weights: (N,). Returns (N,) for ``reduction="none"``, else a 0-dim tensor (fp32).

    Semantics (``s_ij = a_i . b_j / temperature``; ``P(i)``: contrasts of anchor i's label
    other than its own self; self is contrast ``self_offset + i``):
        ``all``:          log_prob(i, p) = s_ip - log sum_{j != self} exp(s_ij)
        ``pos_plus_neg``: log_prob(i, p) = s_ip - log(exp(s_ip) + sum_{n: y_n != y_i} exp(s_in))
        l_i = -(temperature / base_temperature) * mean_{p in P(i)} log_prob(i, p), and 0 when
        P(i) is empty. ``none`` returns ``l_i * w_i``; ``mean`` returns
        ``sum_i w_i l_i / #{i : P(i) non-empty}`` (0 when no anchor has a positive).
        l_i is NaN when a_i or any contrast has a non-finite value (:func:`nonfinite_to_nan`).
    """
    loss, num_pos = per_anchor_reference(
        anchors,
        labels,
        contrasts,
        contrast_labels,
        temperature=temperature,
        base_temperature=base_temperature,
        denominator=denominator,
        self_offset=self_offset,
    )
    return reduce_loss(loss, num_pos, anchors, contrasts, weights, reduction)


dispatch.register("supcon_loss", "torch", per_anchor_reference)


def _check(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor | None,
    contrast_labels: Tensor | None,
    weights: Tensor | None,
    temperature: float,
    base_temperature: float,
    denominator: str,
    reduction: str,
    self_offset: int | None,
    fp32_precision: str,
) -> None:
    if anchors.dim() != 2:
        raise ValueError(f"supcon_loss: anchors must be (N, d), got shape {tuple(anchors.shape)}")
    if not anchors.is_floating_point():
        raise ValueError(f"supcon_loss: anchors must be floating point, got {anchors.dtype}")
    n, d = anchors.shape
    if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"supcon_loss: labels must be an integer tensor of shape ({n},), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if (contrasts is None) != (contrast_labels is None):
        raise ValueError("supcon_loss: contrasts and contrast_labels must be given together")
    if contrasts is not None:
        if contrasts.dim() != 2 or contrasts.shape[1] != d:
            raise ValueError(
                f"supcon_loss: contrasts must be (M, {d}), got shape {tuple(contrasts.shape)}"
            )
        m = contrasts.shape[0]
        if contrast_labels.shape != (m,) or contrast_labels.is_floating_point():
            raise ValueError(
                f"supcon_loss: contrast_labels must be an integer tensor of shape ({m},), "
                f"got {contrast_labels.dtype} {tuple(contrast_labels.shape)}"
            )
        if contrasts.device != anchors.device or contrast_labels.device != anchors.device:
            raise ValueError("supcon_loss: contrasts must be on the anchors' device")
    elif self_offset not in (None, 0):
        raise ValueError("supcon_loss: self_offset needs contrasts (without them it is 0)")
    if labels.device != anchors.device:
        raise ValueError("supcon_loss: labels must be on the anchors' device")
    if weights is not None and (weights.shape != (n,) or weights.device != anchors.device):
        raise ValueError(
            f"supcon_loss: weights must be ({n},) on the anchors' device, got {tuple(weights.shape)}"
        )
    if not temperature > 0 or not base_temperature > 0:
        raise ValueError(
            f"supcon_loss: temperature and base_temperature must be > 0, "
            f"got {temperature} and {base_temperature}"
        )
    if denominator not in DENOMINATORS:
        raise ValueError(
            f"supcon_loss: denominator must be one of {DENOMINATORS}, got {denominator!r}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"supcon_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(
            f"supcon_loss: fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}"
        )


def supcon_loss(
    anchors: Tensor,
    labels: Tensor,
    contrasts: Tensor | None = None,
    contrast_labels: Tensor | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    weights: Tensor | None = None,
    denominator: str = "all",
    reduction: str = "mean",
    backend: str | None = None,
    self_offset: int | None = None,
    fp32_precision: str = "ieee",
) -> Tensor:
    """Supervised contrastive loss without materialising the similarity matrix (fused backends).

    Args:
        anchors: (N, d) float features, L2-normalised by the caller.
        labels: (N,) integer class of each anchor.
        contrasts: (M, d) contrast features (a memory bank, or all ranks' features); ``None``
            uses the anchors themselves with self-pairs excluded.
        contrast_labels: (M,) integer classes, required with ``contrasts``.
        temperature, base_temperature: the loss is scaled by ``temperature / base_temperature``.
        weights: (N,) per-anchor weights (e.g. the reliable mask).
        denominator: ``"all"`` (SupCon) or ``"pos_plus_neg"`` (ContrastiveSeg).
        reduction: ``"mean"`` or ``"none"``.
        backend: ``None`` (automatic), ``"torch"``, ``"triton"``, ``"cpp"`` or ``"cuda"``.
        self_offset: with ``contrasts``, anchor ``i`` is the same sample as contrast
            ``self_offset + i`` and that pair is excluded (as when the contrasts are all ranks'
            features and this rank's anchors start at ``self_offset``). Ignored pairs outside
            ``[0, M)`` are simply absent.
        fp32_precision: how the fused GPU kernels multiply fp32 features: ``"ieee"`` (fp32
            accuracy) or ``"tf32"`` (tensor cores; about 1e-3 relative error on the loss). Only
            the ``triton`` backend on a GPU has a TF32 path; see the module docstring.

    Returns:
        (N,) fp32 per-anchor losses times weights (0 for an anchor with no positive) for
        ``"none"``; else their sum over the number of anchors with at least one positive.
        Gradients flow to ``anchors`` and ``contrasts``. See :func:`supcon_loss_reference`.
        Non-finite features give NaN losses and empty inputs are accepted, alike in every
        backend (see the module docstring).
    """
    _check(
        anchors,
        labels,
        contrasts,
        contrast_labels,
        weights,
        temperature,
        base_temperature,
        denominator,
        reduction,
        self_offset,
        fp32_precision,
    )
    # What every backend takes; they return the unweighted per-anchor losses and positive counts.
    inputs = dict(
        anchors=anchors,
        labels=labels.long(),
        contrasts=contrasts,
        contrast_labels=None if contrast_labels is None else contrast_labels.long(),
        temperature=float(temperature),
        base_temperature=float(base_temperature),
        denominator=denominator,
        self_offset=self_offset,
        fp32_precision=fp32_precision,
    )
    impl = dispatch.select("supcon_loss", backend, anchors.device, inputs)
    loss, num_pos = impl.fn(**inputs)
    return reduce_loss(loss, num_pos, anchors, contrasts, weights, reduction)


class SupConLoss(nn.Module):
    """Drop-in for the SupContrast ``SupConLoss`` (Khosla et al.), backed by :func:`supcon_loss`.

    Called as ``loss(features, labels)`` with ``features: (bsz, n_views, d)`` (L2-normalised) and
    ``labels: (bsz,)``; without labels every sample is its own class (SimCLR).
    ``contrast_mode="all"`` uses every view as an anchor, ``"one"`` only the first view.

    The value is SupContrast's: the mean over *all* anchors, an anchor without a positive
    counting 0 (as in SupContrast's ``losses.py`` since it stopped giving NaN there; with
    ``n_views=1`` and singleton classes this is where it differs from :func:`supcon_loss`,
    whose ``"mean"`` divides by the anchors that have a positive). Differences that remain:
    an explicit ``mask`` is refused (pass labels); the loss is computed in fp32 whatever the
    features' dtype; an empty batch gives 0 (SupContrast: NaN). ``fp32_precision`` is
    :func:`supcon_loss`'s.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        contrast_mode: str = "all",
        base_temperature: float = 0.07,
        *,
        denominator: str = "all",
        backend: str | None = None,
        fp32_precision: str = "ieee",
    ) -> None:
        super().__init__()
        if contrast_mode not in ("all", "one"):
            raise ValueError(
                f"SupConLoss: contrast_mode must be 'all' or 'one', got {contrast_mode!r}"
            )
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature
        self.denominator = denominator
        self.backend = backend
        self.fp32_precision = fp32_precision

    def forward(
        self, features: Tensor, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        if mask is not None:
            raise ValueError(
                "SupConLoss: an explicit pair mask is not supported by the fused ops; pass labels"
            )
        if features.dim() < 3:
            raise ValueError(
                f"SupConLoss: features must be (bsz, n_views, d), got shape {tuple(features.shape)}"
            )
        features = features.reshape(features.shape[0], features.shape[1], -1)
        bsz, n_views, _ = features.shape
        if labels is None:
            labels = torch.arange(bsz, device=features.device)
        elif labels.shape != (bsz,):
            raise ValueError(
                f"SupConLoss: labels must be ({bsz},) for features of shape {tuple(features.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        contrast = torch.cat(torch.unbind(features, dim=1), dim=0)  # view-major: (n_views*bsz, d)
        contrast_labels = labels.repeat(n_views)
        common = dict(
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            denominator=self.denominator,
            backend=self.backend,
            fp32_precision=self.fp32_precision,
        )
        if self.contrast_mode == "all":
            per_anchor = supcon_loss(contrast, contrast_labels, reduction="none", **common)
        else:
            per_anchor = supcon_loss(
                features[:, 0],
                labels,
                contrast,
                contrast_labels,
                self_offset=0,
                reduction="none",
                **common,
            )
        # SupContrast's mean over every anchor (0 for those without a positive).
        return per_anchor.sum() / max(per_anchor.numel(), 1)
