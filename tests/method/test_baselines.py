"""Mean Teacher and FixMatch: the EMA update, the losses on hand-computed inputs, the totals, a
few steps of training, and the teacher's place in the module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_method import batches, tiny_model

from hermes.method import (
    FixMatchConfig,
    FixMatchMethod,
    HermesMethod,
    MeanTeacherConfig,
    MeanTeacherMethod,
    MethodConfig,
    build_method,
    masked_cross_entropy,
    rampup,
    softmax_mse,
)
from hermes.method.method import full_forward
from hermes.ops import dual_threshold


def test_build_method_follows_the_mode() -> None:
    kinds = {
        "hermes": HermesMethod,
        "supervised": HermesMethod,
        "mean_teacher": MeanTeacherMethod,
        "fixmatch": FixMatchMethod,
    }
    for mode, kind in kinds.items():
        assert type(build_method(tiny_model(), MethodConfig(mode=mode))) is kind


def test_softmax_mse_by_hand() -> None:
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)  # softmax (0.5, 0.5)
    teacher = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)  # (0.75, 0.25)
    loss = softmax_mse(student, teacher)
    assert loss.item() == pytest.approx(0.0625)  # mean of 0.25^2 over 2 entries
    loss.backward()
    assert teacher.grad is None  # the teacher's side is a target
    # d/ds of mean((p - q)^2) with p = softmax(s): p(1-p) * 2 (p - q) * (1 - (-1)) / 2
    assert student.grad[0, 0].item() == pytest.approx(0.25 * 2 * -0.25 * 2 / 2)
    # per pixel: the mean runs over pixels and classes
    s = torch.zeros(1, 2, 2, 2)
    t = torch.zeros(1, 2, 2, 2)
    t[0, 0, 0, 0] = math.log(3.0)
    assert softmax_mse(s, t).item() == pytest.approx(0.0625 * 2 / 8)


def test_masked_cross_entropy_per_pixel_by_hand() -> None:
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 0] = math.log(3.0)  # p(1) = 0.75 at pixel 0
    target = torch.tensor([[[1, 0]]])
    keep = torch.tensor([[[True, False]]])
    # -log 0.75 at the kept pixel, the dropped one counts 0, divided by both pixels
    assert masked_cross_entropy(logits, target, keep).item() == pytest.approx(-math.log(0.75) / 2)


def test_fixed_threshold_through_dual_threshold_is_fixmatch_mask() -> None:
    """Equal class thresholds and no entropy test: kept exactly where max p > threshold."""
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(64, 3, generator=g)
    out = dual_threshold(logits, eta=math.inf, tau_max=0.95, tau_min=0.95)
    p = torch.softmax(logits, dim=1)
    assert torch.equal(out.reliable, p.amax(dim=1) > 0.95)
    assert torch.equal(out.labels, p.argmax(dim=1))
    assert 0 < int(out.reliable.sum()) < 64


def test_ema_update_by_hand() -> None:
    method = MeanTeacherMethod(tiny_model(), MethodConfig(mode="mean_teacher"))
    with torch.no_grad():
        for p in method.model.parameters():
            p.fill_(1.0)
        for p in method.teacher.parameters():
            p.fill_(0.0)
    buffers = {k: v.clone() for k, v in method.teacher.named_buffers()}
    assert method.update_teacher(1) == pytest.approx(0.5)  # min(1 - 1/2, 0.99)
    assert all(torch.all(p == 0.5) for p in method.teacher.parameters())
    assert method.update_teacher(1000) == pytest.approx(0.99)
    assert all(torch.allclose(p, torch.tensor(0.505)) for p in method.teacher.parameters())
    # BatchNorm statistics are the teacher's own, not averaged
    assert all(torch.equal(v, buffers[k]) for k, v in method.teacher.named_buffers())


def test_teacher_is_a_copy_without_gradients_and_in_the_state_dict() -> None:
    model = tiny_model()
    method = MeanTeacherMethod(model, MethodConfig(mode="mean_teacher"))
    student = dict(model.named_parameters())
    for name, p in method.teacher.named_parameters():
        assert not p.requires_grad and torch.equal(p, student[name])
        assert p.data_ptr() != student[name].data_ptr()
    assert any(k.startswith("teacher.") for k in method.state_dict())
    labeled, unlabeled = batches()
    loss, _ = method(labeled, unlabeled, step=0, total_steps=10)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None for p in model.parameters())


def _check_total(logs: dict[str, torch.Tensor]) -> None:
    w = MethodConfig().weights
    want = w.cls_total * (
        logs["loss/ce_l"] + logs["schedule/weight_cls"] * logs["loss/unsup_cls"]
    ) + w.seg_total * (logs["loss/seg_sup"] + logs["schedule/weight_seg"] * logs["loss/unsup_seg"])
    torch.testing.assert_close(logs["loss/total"], want.float())


def test_mean_teacher_terms_and_total() -> None:
    labeled, unlabeled = batches()
    cfg = MethodConfig(mode="mean_teacher", mean_teacher=MeanTeacherConfig(rampup=0.5))
    method = MeanTeacherMethod(tiny_model(decoder_dropout=0.0), cfg)  # deterministic forward
    _, logs = method(labeled, unlabeled, step=3, total_steps=10)
    ramp = rampup(3, 5.0)
    assert logs["schedule/weight_cls"].item() == pytest.approx(10.0 * ramp)
    assert logs["schedule/weight_seg"].item() == pytest.approx(0.1 * ramp)
    assert logs["schedule/ema_decay"].item() == pytest.approx(0.75)  # min(1 - 1/4, 0.99)
    _check_total(logs)
    # the consistency is the softmax MSE of the student (strong) against the teacher (weak)
    with torch.no_grad():
        cls_t, seg_t = full_forward(method.teacher, unlabeled["weak"])
        cls_s, seg_s = full_forward(method.model, unlabeled["strong"])
    torch.testing.assert_close(logs["loss/unsup_cls"], softmax_mse(cls_s.logits, cls_t.logits))
    torch.testing.assert_close(logs["loss/unsup_seg"], softmax_mse(seg_s.logits, seg_t.logits))


def test_fixmatch_terms_and_total() -> None:
    labeled, unlabeled = batches()
    cfg = MethodConfig(mode="fixmatch", fixmatch=FixMatchConfig(threshold=0.5))
    method = FixMatchMethod(tiny_model(decoder_dropout=0.0), cfg)  # deterministic forward
    _, logs = method(labeled, unlabeled, step=0, total_steps=10)
    assert logs["schedule/weight_cls"].item() == 1.0
    assert logs["schedule/weight_seg"].item() == 0.5
    _check_total(logs)
    with torch.no_grad():
        cls_w, seg_w = full_forward(method.model, unlabeled["weak"])
        cls_s, seg_s = full_forward(method.model, unlabeled["strong"])
    for weak, strong, key in ((cls_w, cls_s, "cls"), (seg_w, seg_s, "seg")):
        p = torch.softmax(weak.logits, dim=1)
        keep = (p.amax(dim=1) > 0.5).float()
        ce = F.cross_entropy(strong.logits, p.argmax(dim=1), reduction="none")
        torch.testing.assert_close(logs[f"loss/unsup_{key}"], (ce * keep).mean())
    assert "pseudo_cls/kept" in logs and "pseudo_seg/acc_kept_unlabeled" in logs


def test_fixmatch_keeps_nothing_below_the_threshold() -> None:
    labeled, unlabeled = batches()
    method = FixMatchMethod(
        tiny_model(), MethodConfig(mode="fixmatch", fixmatch=FixMatchConfig(threshold=1.0))
    )
    _, logs = method(labeled, unlabeled, step=0, total_steps=10)
    assert logs["loss/unsup_cls"].item() == 0.0 and logs["loss/unsup_seg"].item() == 0.0
    assert logs["pseudo_cls/kept"].item() == 0.0


@pytest.mark.parametrize("mode", ["mean_teacher", "fixmatch"])
def test_a_few_steps_lower_the_loss(mode: str) -> None:
    torch.manual_seed(0)
    labeled, unlabeled = batches()
    cfg = MethodConfig(
        mode=mode,
        mean_teacher=MeanTeacherConfig(rampup=0.0),
        fixmatch=FixMatchConfig(threshold=0.5),
    )
    method = build_method(tiny_model(), cfg)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    totals = []
    for step in range(6):
        opt.zero_grad()
        loss, logs = method(labeled, unlabeled, step=step, total_steps=6)
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item())
        totals.append(logs["loss/total"].item())
    assert min(totals[-2:]) < totals[0], totals


def test_supervised_part_is_the_hermes_supervised_loss() -> None:
    """Without unlabeled data every method is supervised-only: the same loss, exactly."""
    labeled, _ = batches()
    want, _ = HermesMethod(tiny_model(), MethodConfig(mode="supervised"))(labeled, None)
    for mode in ("mean_teacher", "fixmatch"):
        got, _ = build_method(tiny_model(), MethodConfig(mode=mode))(labeled, None)
        torch.testing.assert_close(got, want)


def test_bad_baseline_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="method.mean_teacher.ema_decay"):
        MeanTeacherConfig(ema_decay=1.5)
    with pytest.raises(ValueError, match="method.fixmatch.threshold"):
        FixMatchConfig(threshold=-0.1)
    with pytest.raises(ValueError, match="method.mean_teacher.weight_cls"):
        MeanTeacherConfig(weight_cls=math.nan)


def _one_step_per_setting(mode: str, field: str, values: tuple) -> tuple:
    """The logs of one step of ``mode`` from the same initial weights for each value of the
    ``MethodConfig`` field, and the labeled batch with the networks' outputs on it (training
    mode, as in the step: batch statistics; no dropout)."""
    labeled, unlabeled = batches()
    logs = {}
    for value in values:
        cfg = MethodConfig(mode=mode, tau_min=0.0, max_views=4, max_samples=32, **{field: value})
        torch.manual_seed(3)
        model = tiny_model(decoder_dropout=0.0)
        _, logs[value] = build_method(model, cfg)(labeled, unlabeled, step=0, total_steps=10)
    with torch.no_grad():
        outputs = full_forward(model, labeled["image"])
    return labeled, logs, outputs


@pytest.mark.parametrize("mode", ["hermes", "supervised", "mean_teacher", "fixmatch"])
def test_dice_reduction_reaches_every_method(mode: str) -> None:
    """``dice_reduction: image`` turns the labeled Dice into the per-image mean in every mode
    (and Hermes's Dice_u too); the other terms stay as they were."""
    from hermes.method import dice_loss

    labeled, logs, (_, seg) = _one_step_per_setting(mode, "dice_reduction", ("batch", "image"))
    mask = labeled["mask"].long()
    per_image = dice_loss(seg.logits, mask, per_image=True)
    assert logs["image"]["loss/seg_dice"].item() == pytest.approx(per_image.item(), rel=1e-5)
    assert logs["batch"]["loss/seg_dice"].item() == pytest.approx(
        dice_loss(seg.logits, mask).item(), rel=1e-5
    )
    assert logs["image"]["loss/seg_dice"].item() != logs["batch"]["loss/seg_dice"].item()
    assert logs["image"]["loss/ce_l"].item() == logs["batch"]["loss/ce_l"].item()
    if mode == "hermes":
        assert logs["image"]["loss/dice_u"].item() != logs["batch"]["loss/dice_u"].item()


@pytest.mark.parametrize("mode", ["hermes", "supervised", "mean_teacher", "fixmatch"])
def test_label_smoothing_reaches_every_method(mode: str) -> None:
    """``label_smoothing`` smooths the labeled classification cross-entropy in every mode and
    nothing else: the segmentation terms are those without it."""
    labeled, logs, (cls, _) = _one_step_per_setting(mode, "label_smoothing", (0.0, 0.3))
    y = labeled["label"].long()
    expected = F.cross_entropy(cls.logits, y, label_smoothing=0.3)
    assert logs[0.3]["loss/ce_l"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs[0.0]["loss/ce_l"].item() == pytest.approx(
        F.cross_entropy(cls.logits, y).item(), rel=1e-5
    )
    assert logs[0.3]["loss/ce_l"].item() != logs[0.0]["loss/ce_l"].item()
    assert logs[0.3]["loss/seg_sup"].item() == logs[0.0]["loss/seg_sup"].item()
