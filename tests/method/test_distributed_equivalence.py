"""Under data parallelism each rank's loss has the global batch's value, and its gradient with
respect to the rank's own tensors is the global loss's gradient with respect to them (so that,
with the loss scaled by the world size, DeepSpeed's gradient averaging gives the single-process
gradient). Checked on 2 gloo processes against one process over the global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hermes.method import (
    cross_entropy_mean,
    dice_loss,
    image_contrast,
    masked_cross_entropy,
    softmax_mse,
)

WORLD = 2
B = 3  # per rank


def global_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * B
    return {
        "strong": F.normalize(torch.randn(n, 6, generator=g), dim=1),
        "weak": F.normalize(torch.randn(n, 6, generator=g), dim=1),
        "labels": torch.tensor([0, 1, 0, 1, 1, 0]),
        "reliable": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0]),
        "seg": torch.randn(n, 2, 4, 4, generator=g),
        "mask": (torch.rand(n, 4, 4, generator=g) > 0.6).long(),
        "cls": torch.randn(n, 2, generator=g),
        "keep": torch.rand(n, 4, 4, generator=g) > 0.5,
    }


def losses(x: dict[str, torch.Tensor], comm=None) -> dict[str, torch.Tensor]:
    kw = {} if comm is None else {"comm": comm}
    return {
        "contrast": image_contrast(x["strong"], x["weak"], x["labels"], x["reliable"], **kw),
        "dice": dice_loss(x["seg"], x["mask"], weight=x["mask"] >= 0, **kw),
        "dice_per_image": dice_loss(x["seg"], x["mask"], weight=x["keep"], per_image=True, **kw),
        "ce": cross_entropy_mean(x["cls"], x["labels"], **kw),
        "ce_smooth": cross_entropy_mean(x["cls"], x["labels"], label_smoothing=0.1, **kw),
        # the baselines' terms: Mean Teacher's consistency, FixMatch's kept cross-entropies
        "mse_cls": softmax_mse(x["cls"], x["strong"][:, :2], **kw),
        "mse_seg": softmax_mse(x["seg"], x["seg"].flip(1) * 0.5, **kw),
        "fixmatch_cls": masked_cross_entropy(x["cls"], x["labels"], x["reliable"], **kw),
        "fixmatch_seg": masked_cross_entropy(x["seg"], x["mask"], x["keep"], **kw),
    }


def _worker(rank: int, tmp: str) -> None:
    from hermes.train.distributed.comm import TorchDistComm

    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=WORLD)
    try:
        comm = TorchDistComm()
        rows = slice(rank * B, (rank + 1) * B)
        x = {k: v[rows].clone() for k, v in global_inputs().items()}
        for k in ("strong", "weak", "seg", "cls"):
            x[k].requires_grad_(True)
        out = {}
        for name, value in losses(x, comm).items():
            grads = torch.autograd.grad(
                value, [x["strong"], x["weak"], x["seg"], x["cls"]], allow_unused=True
            )
            out[name] = (value.detach(), [None if g is None else g.detach() for g in grads])
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    pytest.importorskip("hermes.train.distributed.comm")
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    x = {k: v.clone() for k, v in global_inputs().items()}
    for k in ("strong", "weak", "seg", "cls"):
        x[k].requires_grad_(True)
    for name, value in losses(x).items():
        full = torch.autograd.grad(
            value, [x["strong"], x["weak"], x["seg"], x["cls"]], allow_unused=True
        )
        for rank in range(WORLD):
            got_value, got_grads = torch.load(tmp_path / f"rank{rank}.pt")[name]
            torch.testing.assert_close(got_value, value.detach(), msg=f"{name} value, rank {rank}")
            rows = slice(rank * B, (rank + 1) * B)
            for g_full, g_rank in zip(full, got_grads, strict=True):
                if g_full is None:
                    assert g_rank is None or torch.all(g_rank == 0)
                    continue
                torch.testing.assert_close(g_rank, g_full[rows], msg=f"{name} grad, rank {rank}")
