"""HermesModel: output contract, IAS switches, gradient junctions, parameter groups."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn.functional as F

from hermes.models import ClsOutput, HermesModel, ModelConfig, SegOutput, build_model

B, H = 4, 64
TinyConfig = Callable[..., ModelConfig]


def _check_outputs(model: HermesModel, x: torch.Tensor) -> None:
    cfg = model.cfg
    sal = model.saliency(x)
    if cfg.saliency:
        assert sal is not None and sal.shape == (B, 1, H, H)
    else:
        assert sal is None
    seg = model.forward_seg(x, saliency=sal)
    assert isinstance(seg, SegOutput)
    assert seg.logits.shape == (B, cfg.seg_classes, H, H)
    assert seg.embedding.shape == (B, cfg.embed_dim, H // 8, H // 8)
    torch.testing.assert_close(seg.embedding.norm(dim=1), torch.ones(B, H // 8, H // 8))
    assert seg.consistency.shape == (B, cfg.consistency_dim)
    assert [tuple(f.shape[-2:]) for f in seg.features] == [(H >> i, H >> i) for i in (1, 2, 3, 4)]
    cls = model.forward_cls(x, seg_features=seg.features if cfg.attention else None)
    assert isinstance(cls, ClsOutput)
    assert cls.logits.shape == (B, cfg.num_classes)
    assert cls.projection.shape == (B, cfg.proj_dim)
    torch.testing.assert_close(cls.projection.norm(dim=1), torch.ones(B))
    assert cls.consistency.shape == (B, cfg.consistency_dim)
    for t in (seg.logits, seg.embedding, seg.consistency, cls.logits, cls.projection):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize(
    ("attention", "saliency"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_output_shapes(
    images: torch.Tensor, tiny: TinyConfig, num_classes: int, attention: bool, saliency: bool
) -> None:
    cfg = tiny(num_classes=num_classes, attention=attention, saliency=saliency)
    _check_outputs(build_model(cfg), images)


def test_small_preset_output_shapes(images: torch.Tensor) -> None:
    model = build_model(ModelConfig(preset="small"))
    assert model.seg.encoder.feature_info.channels() == [32, 32, 64, 128, 256]
    _check_outputs(model, images)


@pytest.mark.parametrize("source", ["decoder", "encoder"])
def test_attention_source(images: torch.Tensor, tiny: TinyConfig, source: str) -> None:
    _check_outputs(build_model(tiny(attention_source=source)), images)


def test_saliency_off_removes_decoder_channels(tiny: TinyConfig) -> None:
    on = build_model(tiny(saliency=True)).seg.decoder[2].conv1[0]
    off = build_model(tiny(saliency=False)).seg.decoder[2].conv1[0]
    assert on.in_channels - off.in_channels == 4


@pytest.mark.skipif(
    "res2net101d" not in timm.list_models("res2net101d"), reason="timm lacks res2net101d"
)
def test_paper_output_shapes(images: torch.Tensor) -> None:
    # The paper's structure from random weights (its ImageNet weights come from timm's hub).
    cfg = ModelConfig(preset="paper", num_classes=3, pretrained_cls="none", pretrained_seg="none")
    model = build_model(cfg)
    assert model.seg.encoder.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert model.cls.encoder.num_features == 512
    _check_outputs(model, images)


def test_parameter_groups_partition_the_parameters() -> None:
    model = build_model(ModelConfig())
    seg = {id(p) for p in model.seg.parameters()}
    cls = {id(p) for p in model.cls.parameters()}
    everything = [id(p) for p in model.parameters()]
    assert seg.isdisjoint(cls)
    assert seg | cls == set(everything) and len(everything) == len(seg) + len(cls)
    assert all(id(p) in cls for p in model.cls.attention.parameters())


def test_saliency_is_detached_normalised_and_side_effect_free(
    images: torch.Tensor, tiny: TinyConfig
) -> None:
    model = build_model(tiny())
    stats = {
        k: v.clone()
        for k, v in model.cls.state_dict().items()
        if "running" in k or "num_batches" in k
    }
    with torch.no_grad():  # must work inside no_grad too
        sal = model.saliency(images)
    assert not sal.requires_grad and sal.grad_fn is None
    assert sal.min() >= 0 and sal.max() <= 1
    torch.testing.assert_close(sal.amax(dim=(1, 2, 3)), torch.ones(B))
    torch.testing.assert_close(sal.amin(dim=(1, 2, 3)), torch.zeros(B))
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.cls.state_dict().items():
        if k in stats:
            torch.testing.assert_close(v, stats[k], msg=k)


def test_saliency_matches_its_definition(images: torch.Tensor, tiny: TinyConfig) -> None:
    model = build_model(tiny()).eval()
    x = images.clone().requires_grad_(True)
    model.cls(x).logits.amax(dim=1).sum().backward()
    raw = x.grad.abs().amax(dim=1, keepdim=True)
    low, high = raw.amin(dim=(2, 3), keepdim=True), raw.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(model.saliency(images), (raw - low) / (high - low))


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("detach", [True, False])
def test_gradient_junctions(images: torch.Tensor, tiny: TinyConfig, detach: bool) -> None:
    model = build_model(tiny(detach_seg_features=detach))
    sal = model.saliency(images)
    seg = model.forward_seg(images, saliency=sal)
    cls = model.forward_cls(images, seg_features=seg.features)
    # The classification loss reaches the segmentation branch only without the detach.
    F.cross_entropy(cls.logits, torch.tensor([0, 1, 0, 1])).backward(retain_graph=True)
    assert _grad_norm(model.cls) > 0
    assert (_grad_norm(model.seg) > 0) == (not detach)
    # The segmentation loss never reaches the classification branch (the saliency is detached).
    model.zero_grad(set_to_none=True)
    F.cross_entropy(seg.logits, torch.randint(0, 2, (B, H, H))).backward()
    assert _grad_norm(model.seg) > 0
    assert _grad_norm(model.cls) == 0


def test_forward_dispatches_by_mode(images: torch.Tensor, tiny: TinyConfig) -> None:
    model = build_model(tiny()).eval()
    sal = model(images, mode="saliency")
    seg = model(images, mode="seg", saliency=sal)
    cls = model(images, mode="cls", seg_features=seg.features)
    torch.testing.assert_close(cls.logits, model.forward_cls(images, seg.features).logits)
    with pytest.raises(ValueError, match="mode"):
        model(images, mode="both")


def test_input_errors(images: torch.Tensor, tiny: TinyConfig) -> None:
    model = build_model(tiny())
    with pytest.raises(ValueError, match="divisible by 32"):
        model.forward_cls(torch.randn(2, 3, 48, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.forward_seg(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="saliency"):
        model.forward_seg(images)  # cfg.saliency=True needs the map
    with pytest.raises(ValueError, match="seg_features must have shapes"):
        model.forward_cls(images, seg_features=[torch.randn(4, 1, 8, 8)] * 4)
    no_ias = build_model(tiny(attention=False, saliency=False))
    with pytest.raises(ValueError, match="cfg.saliency is False"):
        no_ias.forward_seg(images, saliency=torch.zeros(4, 1, 64, 64))
    with pytest.raises(ValueError, match="cfg.attention is False"):
        no_ias.forward_cls(
            images, seg_features=model.forward_seg(images, model.saliency(images)).features
        )


def test_a_few_steps_lower_the_supervised_loss(images: torch.Tensor, tiny: TinyConfig) -> None:
    model = build_model(tiny(decoder_dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.tensor([0, 1, 0, 1])
    mask = (images[:, :1] > 0).long().squeeze(1)  # learnable from the pixels
    losses = []
    for _ in range(8):
        sal = model.saliency(images)
        seg = model.forward_seg(images, saliency=sal)
        cls = model.forward_cls(images, seg_features=seg.features)
        loss = F.cross_entropy(seg.logits, mask) + F.cross_entropy(cls.logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_bfloat16_autocast(images: torch.Tensor, tiny: TinyConfig) -> None:
    model = build_model(tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sal = model.saliency(images)
        seg = model.forward_seg(images, saliency=sal)
        cls = model.forward_cls(images, seg_features=seg.features)
        loss = seg.logits.float().mean() + cls.logits.float().mean()
    loss.backward()
    assert sal.dtype == torch.float32 and 0 <= sal.min() and sal.max() <= 1
    assert torch.isfinite(cls.logits.float()).all() and torch.isfinite(seg.logits.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_saliency_of_a_single_image_in_train_mode(tiny: TinyConfig) -> None:
    sal = build_model(tiny()).train().saliency(torch.randn(1, 3, 64, 64))
    assert sal.shape == (1, 1, 64, 64)


def test_saliency_under_inference_mode(images: torch.Tensor, tiny: TinyConfig) -> None:
    model = build_model(tiny()).eval()
    expected = model.saliency(images)
    with torch.inference_mode():
        sal = model.saliency(images)
        seg = model.forward_seg(images, saliency=sal)
    torch.testing.assert_close(sal, expected)
    assert seg.logits.shape == (B, 2, H, H)
