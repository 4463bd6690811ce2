"""Hermes with an EMA pseudo-label teacher (``method.teacher: ema``): where the pseudo-labels
come from, the teacher's place in the module, and its update."""

from __future__ import annotations

import pytest
import torch
from test_method import batches, tiny_model

from hermes.method import HermesMethod, MethodConfig


def test_student_mode_has_no_teacher() -> None:
    method = HermesMethod(tiny_model(), MethodConfig())
    assert method.teacher is None
    assert not any(k.startswith("teacher.") for k in method.state_dict())


def test_pseudo_labels_come_from_the_teacher() -> None:
    labeled, unlabeled = batches()  # unlabeled truth: classes 0, 1, 0, 1
    results = {}
    for teacher in ("student", "ema"):
        method = HermesMethod(tiny_model(decoder_dropout=0.0), MethodConfig(teacher=teacher))
        if method.teacher is not None:
            with torch.no_grad():  # a teacher certain of class 1 for every image
                method.teacher.cls.classifier.bias.copy_(torch.tensor([-50.0, 50.0]))
        _, logs = method(labeled, unlabeled, step=0, total_steps=10)
        results[teacher] = logs
    ema = results["ema"]
    assert ema["pseudo_cls/kept_unlabeled"].item() == pytest.approx(1.0)
    assert ema["pseudo_cls/acc_kept_unlabeled"].item() == pytest.approx(0.5)
    # the student of the same weights is nowhere near certain: it keeps fewer images
    assert results["student"]["pseudo_cls/kept_unlabeled"].item() < 1.0


def test_teacher_follows_the_student_by_ema_without_gradients() -> None:
    labeled, unlabeled = batches()
    model = tiny_model(decoder_dropout=0.0)
    method = HermesMethod(model, MethodConfig(teacher="ema", teacher_decay=0.99))
    assert any(k.startswith("teacher.") for k in method.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {k: p.clone() for k, p in method.teacher.named_parameters()}
    loss, logs = method(labeled, unlabeled, step=3, total_steps=10)
    assert logs["schedule/teacher_decay"].item() == pytest.approx(0.75)  # min(1 - 1/4, 0.99)
    student = dict(model.named_parameters())
    for name, p in method.teacher.named_parameters():
        want = 0.75 * before[name] + 0.25 * student[name].detach()
        torch.testing.assert_close(p, want)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None for p in model.parameters())


def test_bad_teacher_names_the_field() -> None:
    with pytest.raises(ValueError, match="method.teacher"):
        MethodConfig(teacher="mean")
    with pytest.raises(ValueError, match="method.teacher_decay"):
        MethodConfig(teacher_decay=1.5)
