"""``TorchDistComm`` on 2 gloo processes equals a single process on the global batch.

One spawn of two CPU processes computes everything (the image-level contrast with its
gradients, the dual threshold with its statistics, the raw differentiable all-gather); the
tests compare what each rank saved with a single-process run on the concatenated batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from hermes.ops import dual_threshold, supcon_loss

pytestmark = pytest.mark.dist

WORLD = 2
SIZES = (5, 3)  # unequal per-rank batches: the all-gather pads and unpads
CLASSES = 3


def _problem() -> dict[str, torch.Tensor | nn.Module]:
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    net = nn.Linear(6, 5)
    with torch.no_grad():
        net.weight.copy_(torch.randn(5, 6, generator=g))
        net.bias.copy_(torch.randn(5, generator=g))
    return {
        "net": net,
        "strong": torch.randn(n, 6, generator=g),
        "weak": torch.randn(n, 6, generator=g),
        "labels": torch.tensor([0, 1, 2, 0, 1, 1, 2, 0]),
        "weights": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]),
        "logits": 3 * torch.randn(n, CLASSES, generator=g),
        "pixels": 3 * torch.randn(n, 2, 4, 5, generator=g),
        "gather_in": torch.randn(n, 2, generator=g),
        "gather_coef": torch.randn(WORLD, n, 2, generator=g),
    }


def _offset(comm, n: int) -> int:
    """Index of this rank's first row in ``comm.all_gather`` of tensors with ``n`` rows here."""
    from hermes.train.distributed.comm import _gather_sizes

    sizes = _gather_sizes(n, torch.device("cpu"), comm.group, comm.world_size)
    return sum(sizes[: comm.rank])


def _all_reduce_stats(stats, comm):
    """Dual-threshold statistics of the global batch from every rank's local statistics
    (fractions turned back into counts, summed over ranks, divided again)."""
    from hermes.ops.dual_threshold import DualThresholdStats

    hist = stats.histogram.float()
    count = hist.sum()
    packed = torch.cat(
        [
            hist,
            stats.kept_confident * hist,
            stats.kept_certain * hist,
            stats.kept_reliable * hist,
            (stats.mean_confidence * count).reshape(1),
            (stats.mean_entropy * count).reshape(1),
            count.reshape(1),
        ]
    )
    total = comm.all_reduce_sum(packed)
    c = hist.shape[0]
    g_hist, g_count = total[:c], total[-1].clamp(min=1)
    denominator = g_hist.clamp(min=1)
    return DualThresholdStats(
        histogram=g_hist.round().to(torch.int64),
        kept_confident=total[c : 2 * c] / denominator,
        kept_certain=total[2 * c : 3 * c] / denominator,
        kept_reliable=total[3 * c : 4 * c] / denominator,
        mean_confidence=total[4 * c] / g_count,
        mean_entropy=total[4 * c + 1] / g_count,
    )


def _contrast_loss_local(net, strong, weak, labels, weights, comm) -> torch.Tensor:
    """Rank-local image-level contrast, scaled so that averaged gradients are exact."""
    anchors = F.normalize(net(torch.cat([strong, weak])), dim=1)
    anchor_labels = labels.repeat(2)
    contrasts = comm.all_gather(anchors)
    contrast_labels = comm.all_gather(anchor_labels)
    per_anchor = supcon_loss(
        anchors,
        anchor_labels,
        contrasts,
        contrast_labels,
        weights=weights.repeat(2),
        reduction="none",
        self_offset=_offset(comm, anchors.shape[0]),
    )
    counts = torch.bincount(contrast_labels, minlength=CLASSES)
    has_positive = (counts[anchor_labels] > 1).float().sum()
    n_global = comm.all_reduce_sum(has_positive).clamp(min=1)
    return comm.world_size * per_anchor.sum() / n_global


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from hermes.train.distributed.comm import TorchDistComm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        comm = TorchDistComm()
        p = _problem()
        lo, hi = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
        net = p["net"]
        loss = _contrast_loss_local(
            net, p["strong"][lo:hi], p["weak"][lo:hi], p["labels"][lo:hi], p["weights"][lo:hi], comm
        )
        loss.backward()
        for param in net.parameters():  # DDP / DeepSpeed: average the gradients over ranks
            dist.all_reduce(param.grad)
            param.grad /= WORLD

        hook = comm.all_reduce_sum
        eta = 0.8
        cls = dual_threshold(p["logits"][lo:hi], eta=eta, histogram_hook=hook)
        pix = dual_threshold(p["pixels"][lo:hi], eta=eta, histogram_hook=hook)

        x = p["gather_in"][lo:hi].clone().requires_grad_(True)
        gathered = comm.all_gather(x)
        (gathered * p["gather_coef"][rank]).sum().backward()

        torch.save(
            {
                "rank": comm.rank,
                "world_size": comm.world_size,
                "loss": loss.detach(),
                "grads": [param.grad.clone() for param in net.parameters()],
                "cls": cls,
                "cls_global_stats": _all_reduce_stats(cls.stats, comm),
                "pix": pix,
                "pix_global_stats": _all_reduce_stats(pix.stats, comm),
                "gathered": gathered.detach(),
                "gather_grad": x.grad,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("comm")
    mp.start_processes(
        _worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True, start_method="spawn"
    )
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _slices() -> list[slice]:
    return [slice(sum(SIZES[:r]), sum(SIZES[: r + 1])) for r in range(WORLD)]


def test_ranks_are_in_order(ranks):
    assert [r["rank"] for r in ranks] == list(range(WORLD))
    assert all(r["world_size"] == WORLD for r in ranks)


def test_all_gather_unequal_sizes_and_its_gradient(ranks):
    p = _problem()
    for r in ranks:
        torch.testing.assert_close(r["gathered"], p["gather_in"])
    # d(sum_r sum(gathered * coef_r)) / d x_r = sum_r coef_r, restricted to rank r's rows
    expected = p["gather_coef"].sum(0)
    for r, rows in zip(ranks, _slices(), strict=True):
        torch.testing.assert_close(r["gather_grad"], expected[rows])


def test_image_contrast_gradients_equal_single_process(ranks):
    p = _problem()
    net = p["net"]
    single = supcon_loss(
        F.normalize(net(torch.cat([p["strong"], p["weak"]])), dim=1),
        p["labels"].repeat(2),
        weights=p["weights"].repeat(2),
    )
    single.backward()
    # sum_r L_r = W * L: the loss each rank reports, averaged, is the global loss
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, single.detach())
    for r in ranks:
        for got, param in zip(r["grads"], net.parameters(), strict=True):
            torch.testing.assert_close(got, param.grad, rtol=1e-5, atol=1e-6)
    assert net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("key", ["cls", "pix"])
def test_dual_threshold_global_thresholds_and_stats(ranks, key):
    p = _problem()
    single = dual_threshold(p["logits" if key == "cls" else "pixels"], eta=0.8)
    # the batch's classes are imbalanced, so local and global thresholds differ
    assert not torch.allclose(ranks[1][key].thresholds, class_thresholds_local(ranks[1][key]))
    for r, rows in zip(ranks, _slices(), strict=True):
        out = r[key]
        torch.testing.assert_close(out.thresholds, single.thresholds)
        assert torch.equal(out.reliable, single.reliable[rows])
        assert torch.equal(out.labels, single.labels[rows])
        stats = r[f"{key}_global_stats"]
        for field in (
            "histogram",
            "kept_confident",
            "kept_certain",
            "kept_reliable",
            "mean_confidence",
            "mean_entropy",
        ):
            torch.testing.assert_close(getattr(stats, field), getattr(single.stats, field))


def class_thresholds_local(out) -> torch.Tensor:
    from hermes.ops.dual_threshold import class_thresholds

    return class_thresholds(out.stats.histogram, 0.95, 0.5)
