"""Distribution alignment of the classification pseudo-labels
(``method.distribution_alignment``): the running averages, the aligned probabilities, their
place in the module's state and in Hermes's pseudo-labels."""

from __future__ import annotations

import pytest
import torch
from test_method import batches, easy_cfg, tiny_model

from hermes.method import DistributionAlignment, HermesMethod, MethodConfig


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_first_batch_sets_the_mean_prediction_and_the_labeled_frequencies_move_from_uniform():
    align = DistributionAlignment(2, momentum=0.9)
    logits = _logits([[0.8, 0.2], [0.6, 0.4]])
    align(logits, torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(align.source, torch.tensor([0.7, 0.3]))
    # uniform start, one step of 0.9 towards the batch's (0.75, 0.25)
    torch.testing.assert_close(align.target, torch.tensor([0.525, 0.475]))
    assert align.updates.item() == 1
    # second update: a = min(1 - 1/2, 0.9) = 0.5 for the mean prediction
    align(_logits([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([1, 1]))
    torch.testing.assert_close(align.source, torch.tensor([0.6, 0.4]))
    torch.testing.assert_close(align.target, torch.tensor([0.4725, 0.5275]))


def test_aligned_probabilities_by_hand():
    align = DistributionAlignment(2, momentum=0.0)  # the averages are this step's batches
    p = torch.tensor([[0.9, 0.1], [0.7, 0.3]])  # mean prediction (0.8, 0.2)
    out = align(p.log(), torch.tensor([0, 1]))  # labeled frequencies (0.5, 0.5)
    q = p * torch.tensor([0.5 / 0.8, 0.5 / 0.2])
    q = q / q.sum(1, keepdim=True)
    torch.testing.assert_close(out.exp(), q)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    # the aligned batch's mean leans towards the labeled frequencies
    assert out.exp()[:, 1].mean() > p[:, 1].mean()


def test_aligned_equals_the_softmax_when_the_averages_agree():
    logits = torch.randn(6, 3)
    mean = logits.softmax(1).mean(0)  # the class frequencies to follow = the mean prediction
    align = DistributionAlignment(3, momentum=0.0, target=tuple(mean.tolist()))
    out = align(logits, torch.empty(0, dtype=torch.long))  # nothing to correct
    torch.testing.assert_close(out, logits.log_softmax(1), atol=1e-5, rtol=1e-5)


def test_empty_batches_leave_the_averages_and_bad_labels_are_skipped():
    align = DistributionAlignment(2, momentum=0.5)
    align(_logits([[0.9, 0.1]]), torch.tensor([7, -1]))  # no labeled entry in range
    torch.testing.assert_close(align.target, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(align.source, torch.tensor([0.9, 0.1]))
    with pytest.raises(ValueError, match=r"logits must be \(N, 2\)"):
        align(torch.zeros(3, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="momentum"):
        DistributionAlignment(2, momentum=1.0)


def test_buffers_travel_with_the_state_dict():
    align = DistributionAlignment(2)
    align(_logits([[0.8, 0.2]]), torch.tensor([1]))
    other = DistributionAlignment(2)
    other.load_state_dict(align.state_dict())
    for name in ("target", "source", "updates"):
        assert torch.equal(getattr(other, name), getattr(align, name)), name


def test_hermes_aligns_its_image_pseudo_labels_when_asked():
    labeled, unlabeled = batches()  # balanced labeled batch: labels 0, 1, 0, 1
    logs = {}
    for on in (False, True):
        method = HermesMethod(tiny_model(decoder_dropout=0.0), easy_cfg(distribution_alignment=on))
        keys = set(method.state_dict())
        if on:
            assert {"alignment.target", "alignment.source", "alignment.updates"} <= keys
        else:
            assert method.alignment is None
            assert not any(k.startswith("alignment.") for k in keys)
        with torch.no_grad():  # a classifier that favours class 1 for every image
            method.model.cls.classifier.bias.copy_(torch.tensor([-3.0, 3.0]))
        _, logs[on] = method(labeled, unlabeled, step=0, total_steps=10)
    assert "pseudo_cls/align_source_0" not in logs[False]
    assert logs[False]["pseudo_cls/label_fraction_1"].item() == 1.0  # every image class 1
    assert logs[True]["pseudo_cls/align_source_1"].item() > 0.9  # the bias, measured ...
    assert logs[True]["pseudo_cls/align_target_1"].item() == pytest.approx(0.5)
    # ... and divided out: an image is class 1 when its odds exceed the mean's, which some
    # images' odds do and some do not, so both classes are pseudo-labels now
    assert 0.0 < logs[True]["pseudo_cls/label_fraction_1"].item() < 1.0


def test_a_given_target_stays_and_the_pseudo_labels_follow_it():
    align = DistributionAlignment(2, momentum=0.0, target=(2.0, 1.0))  # normalised: 2/3, 1/3
    p = torch.tensor([[0.5, 0.5], [0.4, 0.6], [0.6, 0.4]])  # mean prediction (0.5, 0.5)
    out = align(p.log(), torch.tensor([1, 1, 1, 1]))  # all-malignant labeled batch: ignored
    torch.testing.assert_close(align.target, torch.tensor([2 / 3, 1 / 3]))
    q = p * torch.tensor([(2 / 3) / 0.5, (1 / 3) / 0.5])
    torch.testing.assert_close(out.exp(), q / q.sum(1, keepdim=True))
    # the borderline image (0.4, 0.6) now leans to class 0
    assert out.exp()[1, 0] > 0.5
    with pytest.raises(ValueError, match="target must be 2 positive"):
        DistributionAlignment(2, target=(1.0, 0.0))
    with pytest.raises(ValueError, match="target must be 2 positive"):
        DistributionAlignment(2, target=(1.0, 1.0, 1.0))


def test_bad_alignment_settings_name_the_field():
    with pytest.raises(ValueError, match="method.distribution_alignment"):
        MethodConfig(distribution_alignment="yes")
    with pytest.raises(ValueError, match="method.alignment_momentum"):
        MethodConfig(alignment_momentum=1.0)
    for bad in ((1.0,), (0.5, -0.5), (0.5, True)):
        with pytest.raises(ValueError, match="method.alignment_target"):
            MethodConfig(alignment_target=bad)
    MethodConfig(alignment_target=(0.675, 0.325))


def test_the_target_has_one_frequency_per_data_class():
    from hermes.train.config import load_config

    cfg = load_config("default", ["method.alignment_target=[0.675, 0.325]"])
    assert cfg.method.alignment_target == (0.675, 0.325)
    with pytest.raises(ValueError, match=r"method.alignment_target.*data.classes"):
        load_config("default", ["method.alignment_target=[0.2, 0.3, 0.5]"])
