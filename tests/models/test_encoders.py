"""Encoders from any timm family: ResNet, Res2Net, EfficientNet(-Lite), ConvNeXt in either
branch, with the attention at the classification encoder's first four feature depths."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hermes.models import ModelConfig, build_model

B, H = 2, 64
# (timm name, ResNet-family arguments that keep it small, strides of its attention depths)
FAMILIES = {
    "resnet": ("resnet18", dict(widths=(8, 16, 32, 64), stem_width=8), (2, 4, 8, 16)),
    "res2net": ("res2net50_26w_4s", {}, (2, 4, 8, 16)),
    "efficientnet": ("efficientnet_lite0", {}, (2, 4, 8, 16)),
    "convnext": ("convnext_atto", {}, (4, 8, 16, 32)),
}
HEADS = dict(
    decoder_channels=(16, 8, 8, 8, 8),
    embed_dim=16,
    proj_hidden=16,
    proj_dim=8,
    consistency_dim=16,
    pretrained_cls="none",
    pretrained_seg="none",
)


def _config(family: str, **overrides: object) -> ModelConfig:
    name, args, _ = FAMILIES[family]
    fields = {"seg_encoder": name, "cls_encoder": name}
    if args:
        fields |= {"seg_widths": args["widths"], "seg_stem_width": args["stem_width"]}
        fields |= {"cls_widths": args["widths"], "cls_stem_width": args["stem_width"]}
    return ModelConfig(preset="small", **fields, **HEADS, **overrides)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("attention", [True, False])
def test_family_shapes_saliency_and_gradients(family: str, attention: bool) -> None:
    model = build_model(_config(family, attention=attention))
    strides = FAMILIES[family][2]
    assert model.cls.attention_strides == strides
    x = torch.randn(B, 3, H, H)
    sal = model.saliency(x)
    assert sal.shape == (B, 1, H, H) and 0 <= sal.min() and sal.max() <= 1
    seg = model.forward_seg(x, saliency=sal)
    assert seg.logits.shape == (B, 2, H, H)
    assert seg.embedding.shape == (B, 16, H // 8, H // 8)
    assert [tuple(f.shape[-2:]) for f in seg.features] == [(H // s, H // s) for s in strides]
    cls = model.forward_cls(x, seg_features=seg.features if attention else None)
    assert cls.logits.shape == (B, 2) and cls.projection.shape == (B, 8)
    loss = F.cross_entropy(cls.logits, torch.tensor([0, 1])) + seg.logits.mean()
    loss.backward()
    for branch in (model.cls.encoder, model.seg.encoder, model.seg.decoder):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in branch.parameters())
    if attention:
        assert all(p.grad is not None for p in model.cls.attention.parameters())


@pytest.mark.parametrize("family", ["efficientnet", "convnext"])
def test_attention_changes_the_classification_and_is_removable(family: str) -> None:
    model = build_model(_config(family)).eval()
    x = torch.randn(B, 3, H, H)
    seg = model.forward_seg(x, saliency=model.saliency(x))
    with torch.no_grad():
        # A fixed, non-zero attention output so that the hooked path visibly differs.
        for module in model.cls.attention.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_()
        plain = model.forward_cls(x).logits
        attended = model.forward_cls(x, seg_features=seg.features).logits
        again = model.forward_cls(x).logits
    assert not torch.allclose(plain, attended)
    torch.testing.assert_close(plain, again)  # the hooks act only while features are given


def test_deep_copy_attends_with_its_own_modules() -> None:
    model = build_model(_config("efficientnet")).eval()
    twin = copy.deepcopy(model)
    x = torch.randn(B, 3, H, H)
    seg = model.forward_seg(x, saliency=model.saliency(x))
    with torch.no_grad():
        for p in twin.cls.attention.parameters():
            p.add_(1.0)
        ours = model.forward_cls(x, seg_features=seg.features).logits
        theirs = twin.forward_cls(x, seg_features=seg.features).logits
    assert not torch.allclose(ours, theirs)


def test_encoder_source_across_families() -> None:
    # A ConvNeXt classifier attends at 1/4..1/32; a ResNet segmenter's encoder has those.
    cfg = ModelConfig(
        preset="small", cls_encoder="convnext_atto", attention_source="encoder", **HEADS
    )
    model = build_model(cfg)
    x = torch.randn(B, 3, H, H)
    seg = model.forward_seg(x, saliency=model.saliency(x))
    assert [f.shape[1] for f in seg.features] == [32, 64, 128, 256]  # small preset's stages
    assert [tuple(f.shape[-2:]) for f in seg.features] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert model.forward_cls(x, seg_features=seg.features).logits.shape == (B, 2)


def test_encoder_without_the_strides_is_refused() -> None:
    # A ConvNeXt segmenter has no stride-2 feature for a ResNet classifier's stem attention.
    cfg = ModelConfig(
        preset="small", seg_encoder="convnext_atto", attention_source="encoder", **HEADS
    )
    with pytest.raises(ValueError, match=r"stride\(s\) \[2\]"):
        build_model(cfg)
    with pytest.raises(ValueError, match="not a timm model"):
        build_model(ModelConfig(preset="small", cls_encoder="resnet_999", **HEADS))


def test_identity_init_attention_is_a_uniform_scaling() -> None:
    from hermes.models.cls import IDENTITY_BIAS

    model = build_model(_config("efficientnet", attention_init="identity")).train()
    x = torch.randn(B, 3, H, H)
    seg = model.forward_seg(x, saliency=model.saliency(x))
    block = model.cls.attention[1]
    c = torch.randn(B, 24, H // 4, H // 4)
    scale = torch.sigmoid(torch.tensor(IDENTITY_BIAS)) ** 2
    torch.testing.assert_close(block(c, seg.features[1]), scale * c)
    # It still learns: the zeroed layers get gradients.
    block(c, seg.features[1].detach()).square().sum().backward()
    assert block.attention.fc2.weight.grad.abs().sum() > 0
    assert block.attention.spatial.weight.grad.abs().sum() > 0
    default = build_model(_config("efficientnet")).cls.attention[1]
    assert not torch.allclose(default(c, seg.features[1]), scale * c)
