"""HermesMethod on a tiny two-branch model and random tensors."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from hermes.method import HermesMethod, LossWeights, MemoryBankConfig, MethodConfig
from hermes.models import ModelConfig, build_model

S = 32  # smallest size the networks take


def tiny_model(num_classes: int = 2, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        preset="small",
        num_classes=num_classes,
        cls_widths=(8, 8, 16, 16),
        cls_stem_width=8,
        seg_widths=(8, 8, 16, 16),
        seg_stem_width=8,
        decoder_channels=(16, 8, 8, 8, 8),
        embed_dim=16,
        proj_hidden=16,
        proj_dim=8,
        consistency_dim=8,
        **kw,
    )
    return build_model(cfg)


def batches(num_classes: int = 2, b: int = 4, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, S, S, dtype=torch.long)
    mask[:, 8:24, 8:24] = 1
    labeled = {
        "image": torch.randn(b, 3, S, S, generator=g),
        "mask": mask,
        "label": torch.arange(b) % num_classes,
    }
    weak = torch.randn(b, 3, S, S, generator=g)
    unlabeled = {
        "weak": weak,
        "strong": weak + 0.1 * torch.randn(b, 3, S, S, generator=g),
        "mask": mask,
        "label": torch.arange(b) % num_classes,
    }
    return labeled, unlabeled


def easy_cfg(**kw) -> MethodConfig:
    # low thresholds so that pseudo-labels are kept by an untrained model
    return MethodConfig(tau_max=0.5, tau_min=0.5, eta_start=1.0, max_views=4, max_samples=32, **kw)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_total_is_the_weighted_sum_of_the_terms(num_classes: int) -> None:
    method = HermesMethod(tiny_model(num_classes), easy_cfg(itc_every=1, itc_length=1))
    labeled, unlabeled = batches(num_classes)
    loss, logs = method(labeled, unlabeled, step=3, total_steps=10)
    t = {k.split("/", 1)[1]: v.item() for k, v in logs.items() if k.startswith("loss/")}
    w = LossWeights()
    assert t["seg_sup"] == pytest.approx(0.25 * t["seg_ce"] + 0.25 * t["seg_dice"], rel=1e-5)
    l_cls = 1.1 * (t["ce_l"] + 0.1 * t["ce_u"] + 0.2 * t["contrast_img"])
    lam = logs["schedule/lambda"].item()
    assert lam == 1.0  # rampup(3 // 1, 1)
    l_seg = 0.5 * (t["seg_sup"] + 0.1 * t["dice_u"] + 0.8 * t["contrast_pix"]) + lam * t["itc"]
    assert w.cls_total == 1.1 and w.seg_total == 0.5
    assert loss.item() == pytest.approx(l_cls + l_seg, rel=1e-5)
    assert t["cls"] == pytest.approx(l_cls, rel=1e-5) and t["seg"] == pytest.approx(l_seg, rel=1e-5)
    for name in ("ce_u", "dice_u", "contrast_img", "itc"):
        assert t[name] > 0, name  # every term is active with these thresholds
    # (the pixel contrast is 0 when the pseudo-labels hold one class only: no negatives;
    # it is tested on its own in test_contrast.py)
    assert t["contrast_pix"] >= 0
    assert all(not v.requires_grad for v in logs.values())
    assert logs[f"pseudo_cls/threshold_{num_classes - 1}"].item() == pytest.approx(0.5)
    for key in (
        "pseudo_cls/acc_kept_labeled",
        "pseudo_seg/acc_dropped_unlabeled",
        "pseudo_seg/kept",
        "pseudo_cls/kept_reliable_0",
        "pseudo_seg/mean_entropy",
    ):
        assert key in logs
    loss.backward()
    assert (
        _grad_norm(method.model.cls.parameters()) > 0
        and _grad_norm(method.model.seg.parameters()) > 0
    )


def test_supervised_mode_ignores_unlabeled_data() -> None:
    method = HermesMethod(tiny_model(), MethodConfig(mode="supervised"))
    labeled, unlabeled = batches()
    torch.manual_seed(1)  # same dropout draws in both calls
    loss, logs = method(labeled, unlabeled, step=0, total_steps=10)
    torch.manual_seed(1)
    loss2, _ = method(labeled, None, step=0, total_steps=10)
    expected = 1.1 * logs["loss/ce_l"] + 0.5 * logs["loss/seg_sup"]
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(loss.detach(), loss2.detach())
    assert "pseudo_cls/kept" not in logs  # no unlabeled pseudo-labels in supervised mode


def test_warmup_and_switches() -> None:
    labeled, unlabeled = batches()
    cfg = easy_cfg(warmup_steps=5)
    method = HermesMethod(tiny_model(), cfg)
    _, logs = method(labeled, unlabeled, step=4, total_steps=10)
    assert logs["loss/contrast_img"].item() == 0 and logs["loss/contrast_pix"].item() == 0
    _, logs = method(labeled, unlabeled, step=5, total_steps=10)
    assert logs["loss/contrast_img"].item() > 0
    off = replace(
        cfg, weights=LossWeights(ce_u=0.0, dice_u=0.0, contrast_img=0.0, contrast_pix=0.0, itc=0.0)
    )
    method = HermesMethod(tiny_model(), off)
    loss, logs = method(labeled, unlabeled, step=5, total_steps=10)
    for name in ("ce_u", "dice_u", "contrast_img", "contrast_pix", "itc"):
        assert logs[f"loss/{name}"].item() == 0
    expected = 1.1 * logs["loss/ce_l"] + 0.5 * logs["loss/seg_sup"]
    torch.testing.assert_close(loss.detach(), expected)


def test_fixed_threshold_mode() -> None:
    labeled, unlabeled = batches()
    method = HermesMethod(tiny_model(), MethodConfig(pseudo_labels="fixed", fixed_threshold=0.52))
    _, logs = method(labeled, unlabeled, step=0, total_steps=10)
    assert logs["pseudo_cls/threshold_0"].item() == pytest.approx(0.52)
    assert logs["pseudo_seg/threshold_1"].item() == pytest.approx(0.52)
    assert logs["pseudo_seg/kept_certain_0"].item() == 1.0  # no entropy threshold


def test_seg_tau_min_bounds_the_pixel_thresholds_alone() -> None:
    """The pixel class thresholds follow ``tau_max - (tau_max - seg_tau_min) * (1 - r_c)``
    (from the logged share of each class), the image ones keep ``tau_min``."""
    from hermes.ops.dual_threshold import class_thresholds

    labeled, unlabeled = batches()

    def logs(**kw) -> dict[str, float]:
        cfg = MethodConfig(tau_max=0.95, tau_min=0.5, **kw)
        torch.manual_seed(0)
        _, out = HermesMethod(tiny_model(decoder_dropout=0.0), cfg)(labeled, unlabeled, step=0)
        return {k: v.item() for k, v in out.items()}

    paper, strict = logs(), logs(seg_tau_min=0.8)
    for task, low in (("seg", 0.8), ("cls", 0.5)):
        share = torch.tensor([strict[f"pseudo_{task}/label_fraction_{c}"] for c in (0, 1)])
        want = class_thresholds(share, 0.95, low)
        got = torch.tensor([strict[f"pseudo_{task}/threshold_{c}"] for c in (0, 1)])
        torch.testing.assert_close(got, want)
    for c in (0, 1):
        assert strict[f"pseudo_seg/threshold_{c}"] >= 0.8
        assert strict[f"pseudo_cls/threshold_{c}"] == paper[f"pseudo_cls/threshold_{c}"]
    # the switch changes the pixel thresholds here (not a no-op on this input)
    assert min(paper[f"pseudo_seg/threshold_{c}"] for c in (0, 1)) < 0.8
    with pytest.raises(ValueError, match="method.seg_tau_min"):
        MethodConfig(seg_tau_min=0.99)


def _grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


@pytest.mark.parametrize("trains", ["seg", "cls", "both"])
def test_consistency_trains_the_branches_it_names(trains: str) -> None:
    """L_itc sends gradients only into the branch(es) ``itc_trains`` names, and sits in that
    branch's loss (the segmentation loss for ``both``, as the paper's L_seg)."""
    labeled, unlabeled = batches()
    only_itc = LossWeights(
        cls_total=0.0, seg_total=0.0, ce_u=0.0, dice_u=0.0, contrast_img=0.0, contrast_pix=0.0
    )
    cfg = easy_cfg(weights=only_itc, itc_trains=trains, itc_every=1, itc_length=1)
    method = HermesMethod(tiny_model(), cfg)
    loss, logs = method(labeled, unlabeled, step=3, total_steps=10)
    assert logs["loss/itc"].item() > 0
    assert loss.item() == pytest.approx(logs["loss/itc"].item(), rel=1e-6)
    holder, other = ("cls", "seg") if trains == "cls" else ("seg", "cls")
    assert logs[f"loss/{holder}"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert logs[f"loss/{other}"].item() == 0.0
    loss.backward()
    seg_grad = _grad_norm(method.model.seg.parameters())
    cls_grad = _grad_norm(method.model.cls.parameters())
    assert (seg_grad > 0) == (trains in ("seg", "both"))
    assert (cls_grad > 0) == (trains in ("cls", "both"))


def test_memory_bank_is_filled_and_used() -> None:
    labeled, unlabeled = batches()
    cfg = easy_cfg(memory=MemoryBankConfig(image=True, pixel=True, size=8))
    method = HermesMethod(tiny_model(), cfg)
    _, first = method(labeled, unlabeled, step=0, total_steps=10)
    assert int(method.image_bank.count.sum()) > 0 and int(method.pixel_bank.count.sum()) > 0
    _, second = method(labeled, unlabeled, step=0, total_steps=10)
    # same inputs, same weights; only the bank differs, so the contrasts differ
    assert second["loss/contrast_img"].item() != pytest.approx(first["loss/contrast_img"].item())
    assert "image_bank.features" in method.state_dict()


def test_a_few_steps_lower_the_loss() -> None:
    """The labeled terms fall over a few steps of the full method (the unlabeled terms grow
    as more pseudo-labels pass the thresholds, so the total is not monotone)."""
    torch.manual_seed(0)
    labeled, unlabeled = batches()
    method = HermesMethod(tiny_model(), easy_cfg())
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    supervised = []
    for step in range(6):
        opt.zero_grad()
        loss, logs = method(labeled, unlabeled, step=step, total_steps=6)
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item())
        supervised.append((1.1 * logs["loss/ce_l"] + 0.5 * logs["loss/seg_sup"]).item())
    assert min(supervised[-2:]) < supervised[0]


def test_bad_method_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="method.tau_min"):
        MethodConfig(tau_min=0.99, tau_max=0.9)
    with pytest.raises(ValueError, match="method.mode"):
        MethodConfig(mode="semi")
    with pytest.raises(ValueError, match="method.weights.itc"):
        LossWeights(itc=-1.0)
    with pytest.raises(ValueError, match="method.contrast_fp32_precision"):
        MethodConfig(contrast_fp32_precision="fp16")


def test_freeze_bn_unlabeled_keeps_running_stats_of_the_labeled_pass() -> None:
    labeled, unlabeled = batches()

    def buffers(cfg: MethodConfig, unl) -> dict[str, torch.Tensor]:
        method = HermesMethod(tiny_model(), cfg)
        torch.manual_seed(1)
        method(labeled, unl, step=0, total_steps=10)
        return {k: v.clone() for k, v in method.model.named_buffers() if "running" in k}

    reference = buffers(MethodConfig(mode="supervised"), None)
    frozen = buffers(easy_cfg(freeze_bn_unlabeled=True), unlabeled)
    updated = buffers(easy_cfg(), unlabeled)
    assert all(torch.equal(reference[k], frozen[k]) for k in reference)
    assert not all(torch.equal(reference[k], updated[k]) for k in reference)


def test_pixel_reliability_rules() -> None:
    """``and``: both unlabeled pixel terms use confident AND certain; ``authors``: Dice_u uses
    confident OR certain, the pixel contrast certain alone."""
    from hermes.ops import dual_threshold

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 2, 8, 8, generator=g)
    eta = 0.68  # near ln 2: some pixels are certain without being confident
    pl = dual_threshold(logits, eta=eta, tau_max=0.95, tau_min=0.5)
    p = torch.softmax(logits, dim=1)
    confident = p.amax(dim=1) > pl.thresholds[p.argmax(dim=1)]
    certain = -(p * torch.log(p + 1e-6)).sum(dim=1) < eta
    assert torch.equal(pl.reliable, confident & certain)
    ours = HermesMethod(tiny_model(), MethodConfig())
    assert all(torch.equal(m, confident & certain) for m in ours._pixel_masks(pl, eta))
    authors = HermesMethod(tiny_model(), MethodConfig(pixel_reliability="authors"))
    dice_mask, contrast_mask = authors._pixel_masks(pl, eta)
    assert torch.equal(dice_mask, confident | certain)
    assert torch.equal(contrast_mask, certain)
    # the rules differ on this input, so the switch is not a no-op
    assert not torch.equal(dice_mask, pl.reliable) and not torch.equal(contrast_mask, pl.reliable)
    with pytest.raises(ValueError, match="method.pixel_reliability"):
        MethodConfig(pixel_reliability="or")


def test_authors_pixel_rule_changes_the_unlabeled_dice() -> None:
    labeled, unlabeled = batches()
    cfg = MethodConfig(tau_max=0.95, tau_min=0.9, eta_start=0.9, max_views=4, max_samples=32)
    torch.manual_seed(3)
    _, ours = HermesMethod(tiny_model(decoder_dropout=0.0), cfg)(labeled, unlabeled, step=0)
    authors_cfg = replace(cfg, pixel_reliability="authors")
    torch.manual_seed(3)
    _, theirs = HermesMethod(tiny_model(decoder_dropout=0.0), authors_cfg)(
        labeled, unlabeled, step=0
    )
    assert ours["loss/seg_sup"].item() == theirs["loss/seg_sup"].item()
    assert ours["loss/dice_u"].item() != theirs["loss/dice_u"].item()


def test_pseudo_label_truth_statistics_per_class() -> None:
    from hermes.comm import LocalComm
    from hermes.method.method import log_truth
    from hermes.ops.dual_threshold import DualThresholdOutput

    # truth 0 0 0 1 1 1; pseudo-labels 0 1 0 1 1 0; kept: entries 0, 1, 3 (and 5, which has
    # no valid confidence and is left out); dropped: 2 and 4
    out = DualThresholdOutput(
        labels=torch.tensor([0, 1, 0, 1, 1, 0]),
        confidence=torch.tensor([0.9, 0.8, 0.6, 0.9, 0.5, math.nan]),
        entropy=torch.zeros(6),
        reliable=torch.tensor([True, True, False, True, False, True]),
        thresholds=torch.tensor([0.7, 0.7]),
        stats=None,
    )
    logs: dict[str, torch.Tensor] = {}
    log_truth(logs, "cls", out, torch.tensor([0, 0, 0, 1, 1, 1]), "unlabeled", LocalComm())
    want = {
        "acc_kept_unlabeled": 2 / 3,
        "acc_dropped_unlabeled": 1.0,
        "kept_unlabeled": 3 / 5,
        "acc_kept_unlabeled_0": 1 / 2,  # entries 0 (right) and 1 (wrong)
        "acc_dropped_unlabeled_0": 1.0,
        "kept_unlabeled_0": 2 / 3,
        "precision_kept_unlabeled_0": 1.0,  # entry 0 is the one kept as 0
        "acc_kept_unlabeled_1": 1.0,
        "acc_dropped_unlabeled_1": 1.0,
        "kept_unlabeled_1": 1 / 2,
        "precision_kept_unlabeled_1": 1 / 2,  # entries 1 (truth 0) and 3 kept as 1
    }
    got = {k.split("/")[1]: v.item() for k, v in logs.items()}
    assert got == pytest.approx(want)
    logs.clear()  # nothing kept: the kept fractions are NaN, not 0
    log_truth(
        logs,
        "seg",
        DualThresholdOutput(
            out.labels,
            out.confidence,
            out.entropy,
            torch.zeros(6, dtype=torch.bool),
            out.thresholds,
            None,
        ),
        torch.tensor([0, 0, 0, 1, 1, 1]),
        "labeled",
        LocalComm(),
    )
    assert math.isnan(logs["pseudo_seg/acc_kept_labeled_1"].item())
    assert math.isnan(logs["pseudo_seg/precision_kept_labeled_0"].item())
    assert logs["pseudo_seg/kept_labeled_1"].item() == 0.0
