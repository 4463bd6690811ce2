"""A few training steps of a tiny model built on the three fused ops give the same losses with
the reference backend and with each fast backend (as Liger's ``test/convergence``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hermes.ops import InterTaskAttention, dual_threshold, supcon_loss

STEPS = 3
BATCH, LABELED = 8, 4


class TinyHermes(nn.Module):
    """Shared stem, a segmentation branch fused into the classification branch by IAS, a
    classification head, a segmentation head and a projection head (8 x 8 inputs)."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.seg_branch = nn.Conv2d(8, 8, 3, padding=1)
        self.ias = InterTaskAttention(8, reduction=2, backend=backend)
        self.cls_head = nn.Linear(8, 2)
        self.seg_head = nn.Conv2d(8, 2, 1)
        self.proj = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor):
        f = torch.relu(self.stem(x))
        s = torch.relu(self.seg_branch(f))
        c = self.ias(f, s).mean(dim=(2, 3))
        return self.cls_head(c), self.seg_head(s), F.normalize(self.proj(c), dim=1)


def _losses(backend: str, device: torch.device) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = TinyHermes(backend).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, BATCH, 3, 8, 8, generator=g).to(device)
    labels = torch.randint(0, 2, (STEPS, LABELED), generator=g).to(device)
    masks = torch.randint(0, 2, (STEPS, LABELED, 8, 8), generator=g).to(device)
    history = []
    for step in range(STEPS):
        logits, seg, emb = model(images[step])
        sup = F.cross_entropy(logits[:LABELED], labels[step]) + F.cross_entropy(
            seg[:LABELED], masks[step]
        )
        cls_pl = dual_threshold(
            logits[LABELED:], eta=0.69, tau_max=0.6, tau_min=0.5, backend=backend
        )
        seg_pl = dual_threshold(seg[LABELED:], eta=0.69, tau_max=0.6, tau_min=0.5, backend=backend)
        pixel = F.cross_entropy(seg[LABELED:], seg_pl.labels, reduction="none")
        unsup = (pixel * seg_pl.reliable).sum() / seg_pl.reliable.sum().clamp(min=1)
        all_labels = torch.cat([labels[step], cls_pl.labels])
        weights = torch.cat([torch.ones(LABELED, device=device), cls_pl.reliable.float()])
        contrast = supcon_loss(emb, all_labels, temperature=0.2, weights=weights, backend=backend)
        contrast_seg = supcon_loss(
            emb[:LABELED],
            labels[step],
            emb,
            all_labels,
            self_offset=0,
            temperature=0.2,
            denominator="pos_plus_neg",
            backend=backend,
        )
        loss = sup + unsup + 0.5 * (contrast + contrast_seg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(torch.stack([loss, contrast, contrast_seg, unsup]).detach().cpu())
    return history


def _op_inputs(device: torch.device) -> dict[str, dict]:
    """Representative inputs of each op, to skip a backend that lacks one of them."""
    return {
        "supcon_loss": dict(
            anchors=torch.randn(4, 16, device=device),
            labels=torch.zeros(4, dtype=torch.long, device=device),
            contrasts=None,
            contrast_labels=None,
            temperature=0.2,
            base_temperature=0.07,
            weights=None,
            denominator="all",
            reduction="mean",
            self_offset=None,
        ),
        "dual_threshold": dict(
            logits=torch.randn(4, 2, device=device),
            eta=0.69,
            tau_max=0.6,
            tau_min=0.5,
            valid=None,
            histogram_hook=None,
        ),
        "inter_task_attention": dict(
            cls_feature=torch.randn(1, 8, 8, 8, device=device),
            gate=torch.rand(1, 8, device=device),
            spatial_weight=torch.randn(1, 2, 3, 3, device=device),
            spatial_bias=torch.randn(1, device=device),
        ),
    }


def test_same_losses_step_by_step(fast_backend, require_backend):
    name, device = fast_backend
    for op, inputs in _op_inputs(device).items():
        require_backend(op, name, inputs)
    reference = _losses("torch", device)
    fast = _losses(name, device)
    assert any(h[3] > 0 for h in reference), "no reliable pixel: the test would not test the loop"
    for step, (want, got) in enumerate(zip(reference, fast, strict=True)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"step {step}")
    assert not torch.allclose(reference[0], reference[-1]), "the model did not train"


@pytest.mark.parametrize("backend", ["torch"])
def test_reference_run_is_deterministic(backend):
    """The comparison above is meaningful only if a run repeats exactly."""
    first, second = _losses(backend, torch.device("cpu")), _losses(backend, torch.device("cpu"))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
