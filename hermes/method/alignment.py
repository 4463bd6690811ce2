"""Distribution alignment of the classification pseudo-labels (``method.distribution_alignment``).

ReMixMatch's alignment (Berthelot et al., 2020): the class probabilities ``p`` of an unlabeled
image are multiplied by the ratio of the labeled class frequencies ``pi`` to the running mean
``p_bar`` of the predictions on unlabeled images, then renormalised,

    p~ = normalise(p * pi / p_bar),

so that, averaged over the unlabeled stream, the pseudo-labels' class distribution follows the
labeled one instead of drifting towards the class the network already favours. ``pi`` can
instead be given: the class frequencies the user knows of the unlabeled images (a dataset's
published composition), for when the labeled images were not drawn at those frequencies (a
class-balanced labeled subset of an unbalanced dataset), which a network trained on them
carries into its predictions. ``pi`` (when not given) and
``p_bar`` are exponential moving averages over the global batches (every rank all-reduces the
same sums, so every rank holds the same buffers); they are buffers of the module, so they
travel with ``state_dict`` (checkpoints) and a resumed run continues them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hermes.comm import Comm
from hermes.method.losses import global_sum


class DistributionAlignment(nn.Module):
    """Running class frequencies of the labeled stream and running mean prediction of the
    unlabeled stream, and the alignment of one batch of unlabeled logits.

    Args:
        num_classes: ``C``.
        momentum: the EMA decay ``a`` of both averages. The labeled frequencies start uniform
            and move by ``a`` from the first batch (one labeled batch may hold a single class:
            it must not zero the others' probabilities); the mean prediction uses
            ``min(1 - 1 / (n + 1), a)`` after ``n`` updates, so the first batch sets it.
        target: fixed class frequencies ``pi`` (``C`` positive numbers, normalised here);
            ``None``: the running labeled frequencies.
    """

    def __init__(
        self, num_classes: int, momentum: float = 0.99, target: tuple[float, ...] | None = None
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"DistributionAlignment: num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"DistributionAlignment: momentum must be in [0, 1), got {momentum}")
        if target is not None and (
            len(target) != num_classes or not all(float(t) > 0 for t in target)
        ):
            raise ValueError(
                f"DistributionAlignment: target must be {num_classes} positive class "
                f"frequencies, got {list(target)}"
            )
        self.num_classes, self.momentum = num_classes, momentum
        self.fixed_target = target is not None
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        pi = uniform
        if target is not None:
            pi = torch.tensor([float(t) for t in target])
            pi = pi / pi.sum()
        self.register_buffer("target", pi.clone())  # pi: class frequencies to follow
        self.register_buffer("source", uniform.clone())  # p_bar: mean unlabeled prediction
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def forward(self, logits: Tensor, labels: Tensor, comm: Comm | None = None) -> Tensor:
        """Update the averages with this step's batches and return the aligned log-probabilities
        of ``logits``.

        Args:
            logits: (N, C) unlabeled classification logits (the pseudo-label source).
            labels: (M,) int64 labels of the labeled batch (entries outside ``[0, C)`` are
                skipped).
            comm: sums over the ranks of data parallelism (``None``: one process).

        Returns:
            (N, C) float32 ``log p~``: ``softmax`` of it is the aligned distribution, so it can
            stand in for the logits wherever they are turned into probabilities.
        """
        c = self.num_classes
        if logits.dim() != 2 or logits.shape[1] != c:
            raise ValueError(
                f"DistributionAlignment: logits must be (N, {c}), got {tuple(logits.shape)}"
            )
        p = F.softmax(logits.float(), dim=1)
        # labels outside [0, C) match no class and are not counted
        counts = (labels.long()[:, None] == torch.arange(c, device=labels.device)).sum(0)
        sums = torch.cat([p.sum(0), counts.float()])
        if comm is not None:
            sums = global_sum(sums, comm)
        p_sum, y_sum = sums[:c], sums[c:]
        n_u, n_l = p_sum.sum(), y_sum.sum()  # each row of p sums to 1
        # a batch without entries leaves its average where it is
        a = torch.clamp(1.0 - 1.0 / (self.updates.float() + 1.0), max=self.momentum)
        source = a * self.source + (1 - a) * p_sum / n_u.clamp(min=1)
        self.source.copy_(torch.where(n_u > 0, source, self.source))
        if not self.fixed_target:
            b = self.momentum
            target = b * self.target + (1 - b) * y_sum / n_l.clamp(min=1)
            self.target.copy_(torch.where(n_l > 0, target, self.target))
        self.updates.add_(1)
        aligned = p * (self.target / self.source.clamp(min=1e-6))
        aligned = aligned / aligned.sum(1, keepdim=True).clamp(min=1e-12)
        return aligned.clamp(min=1e-12).log()
