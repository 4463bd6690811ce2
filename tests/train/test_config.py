"""Configuration: presets, overrides, and bad values rejected with the field's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from hermes.train.config import TrainConfig, load_config, save_config, to_dict


def test_presets_load_and_differ() -> None:
    default = load_config("default")
    paper = load_config("paper")
    assert default.data.dataset == "phantom" and default.model.preset == "lite0"
    assert default.model.pretrained_cls == default.model.pretrained_seg == "imagenet"
    assert (paper.model.pretrained_cls, paper.model.pretrained_seg) == ("imagenet", "imagenet")
    assert paper.model.preset == "paper" and paper.data.image_size == 224
    assert paper.optim.steps == 3000 and paper.optim.cls_lr == 1e-4 and paper.optim.seg_lr == 1e-4
    assert paper.method.memory.image is False and paper.method.memory.pixel is False
    assert paper.method.max_samples == 1024 and paper.method.max_views == 100
    # the paper preset keeps the paper's consistency direction, the CPU one the best on BUSI
    assert paper.method.itc_trains == "seg" and default.method.itc_trains == "cls"


def test_overrides_nested_and_typed(tmp_path: Path) -> None:
    cfg = load_config(
        "default",
        [
            "optim.steps=100",
            "method.weights.contrast_img=0.0",
            "data.classes=[benign, malignant]",
            "model.cls_widths=[8, 8, 16, 16]",
            ("data.root", "/some/where"),
        ],
    )
    assert cfg.optim.steps == 100 and cfg.method.weights.contrast_img == 0.0
    assert cfg.model.cls_widths == (8, 8, 16, 16) and cfg.data.root == "/some/where"
    assert isinstance(cfg.optim.cls_lr, float)
    # a saved config loads back to the same thing
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.steps=0", "optim.steps"),
        ("optim.steps=abc", "optim.steps"),
        ("optim.stepz=10", "optim.stepz"),
        ("method.tau_min=1.5", "method.tau_min"),
        ("method.weights.contrast_img=-1", "method.weights.contrast_img"),
        ("method.memory.size=0", "method.memory.size"),
        ("eval.every=-1", "eval.every"),
        ("device=tpu", "device"),
        ("backend=fast", "backend"),
        ("model.num_classes=5", "num_classes"),
        ("data.dataset=imagenet", "dataset"),
        ("amp=maybe", "amp"),
        ("optim.cls_optimizer=lion", "optim.cls_optimizer"),
        ("data.geometry=spin", "geometry"),
        ("model.attention_init=zeros", "attention_init"),
        ("channels_last=sometimes", "channels_last"),
        # the networks need a multiple of 32; 50 used to fail at step 1 inside the saliency map
        ("data.image_size=50", "data.image_size"),
        ("eval.best_metric=nonsense", "eval.best_metric"),  # used to fail after an evaluation
    ],
)
def test_bad_value_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config("default", [override])


def test_model_classes_follow_the_data() -> None:
    three = load_config("default", ["data.classes=[normal, benign, malignant]"])
    assert three.model.num_classes == 3
    assert load_config("default", ["model.num_classes=2"]).model.num_classes == 2  # agrees
    with pytest.raises(ValueError, match=r"model.num_classes: 3, but data.classes .* has 2"):
        load_config("default", ["model.num_classes=3"])
    with pytest.raises(ValueError, match="data.classes"):
        load_config("default", ["data.classes=[a, b, c, d]"])


@pytest.mark.parametrize(
    ("override", "home"),
    [("model.image_size=64", "data.image_size"), ("model.backend=cpp", "backend")],
)
def test_model_settings_with_another_home_are_refused(override: str, home: str) -> None:
    with pytest.raises(ValueError, match=f"{override.split('=')[0]}: .* sets it as {home}$"):
        load_config("default", [override])


def test_a_stored_config_from_before_the_move_loads() -> None:
    """A checkpoint's config written when the model had image_size and backend fields."""
    old = to_dict(load_config("default"))
    old["model"].update(image_size=128, backend="cpp")
    cfg = load_config(None, ["optim.steps=7"], base=old)
    assert cfg.backend == "cpp" and cfg.data.image_size == 128 and cfg.optim.steps == 7
    old["backend"] = "torch"  # the run's own backend wins
    assert load_config(None, base=old).backend == "torch"


def test_detach_junctions_is_refused_with_its_replacement() -> None:
    with pytest.raises(ValueError, match="method.detach_junctions: replaced by method.itc_trains"):
        load_config("default", ["method.detach_junctions=false"])


@pytest.mark.parametrize(("detach", "trains"), [(True, "seg"), (False, "both")])
def test_a_stored_config_with_detach_junctions_loads(detach: bool, trains: str) -> None:
    old = to_dict(load_config("default"))
    del old["method"]["itc_trains"]
    old["method"]["detach_junctions"] = detach
    assert load_config(None, base=old).method.itc_trains == trains


def test_dice_reduction_is_checked() -> None:
    assert load_config("default").method.dice_reduction == "image"
    assert load_config("paper").method.dice_reduction == "batch"
    with pytest.raises(ValueError, match="method.dice_reduction.*'batch', 'image'.*'pixel'"):
        load_config("default", ["method.dice_reduction=pixel"])


def test_label_smoothing_is_checked() -> None:
    assert load_config("default").method.label_smoothing == 0.0
    assert load_config("paper").method.label_smoothing == 0.0
    assert load_config("default", ["method.label_smoothing=0.1"]).method.label_smoothing == 0.1
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ValueError, match=r"method.label_smoothing.*\[0, 1\).*" + bad):
            load_config("default", [f"method.label_smoothing={bad}"])
    with pytest.raises(ValueError, match="method.label_smoothing.*a number.*True"):
        load_config("default", ["method.label_smoothing=true"])


def test_itc_trains_is_checked() -> None:
    with pytest.raises(ValueError, match="method.itc_trains.*'seg', 'cls', 'both'.*'decoder'"):
        load_config("default", ["method.itc_trains=decoder"])


def test_missing_preset_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_config("nope")


def test_defaults_construct() -> None:
    assert TrainConfig().method.mode == "hermes"


def test_cls_optimizer_choice_builds_adamw() -> None:
    import torch

    from hermes.models import ModelConfig, build_model
    from hermes.train.build import build_optimizers
    from hermes.train.config import OptimConfig

    model = build_model(ModelConfig(cls_widths=(8, 8, 8, 8), seg_widths=(8, 8, 8, 8)))
    (cls_opt, seg_opt), _ = build_optimizers(
        model, OptimConfig(cls_optimizer="adamw", cls_lr=5e-4, cls_weight_decay=0.01)
    )
    assert type(cls_opt) is torch.optim.AdamW and type(seg_opt) is torch.optim.Adam
    for group in cls_opt.param_groups:
        assert group["lr"] == 5e-4 and group["weight_decay"] == 0.01
    (sgd, _), _ = build_optimizers(model, OptimConfig())
    assert type(sgd) is torch.optim.SGD
    assert all(g["momentum"] == 0.9 for g in sgd.param_groups)


def test_warmup_epochs_count_the_named_loader(tiny_overrides: list[str]) -> None:
    from hermes.train.build import build_everything

    base = [
        *tiny_overrides,
        "data.labeled=8",
        "data.batch_size=4",
        "data.unlabeled_batch_size=1",
        "warmup_epochs=2",
    ]
    labeled = build_everything(load_config("default", base))
    unlabeled = build_everything(load_config("default", [*base, "warmup_epochs_of=unlabeled"]))
    n_lab, n_unl = len(labeled.data.labeled), len(unlabeled.data.unlabeled)
    assert n_unl > n_lab  # unlabeled images one by one against 8 labeled in batches of 4
    assert labeled.method.cfg.warmup_steps == 2 * n_lab
    assert unlabeled.method.cfg.warmup_steps == 2 * n_unl
    with pytest.raises(ValueError, match="warmup_epochs_of"):
        load_config("default", ["warmup_epochs_of=test"])
    assert load_config("paper", []).warmup_epochs_of == "unlabeled"
    with pytest.raises(ValueError, match="warmup_epochs.*method.warmup_steps"):
        load_config("default", ["warmup_epochs=5"])  # the preset sets method.warmup_steps


def test_encoder_lr_scale_gives_each_branch_an_encoder_group() -> None:
    from hermes.models import ModelConfig, build_model
    from hermes.train.build import build_optimizers
    from hermes.train.config import OptimConfig

    model = build_model(ModelConfig(cls_widths=(8, 8, 8, 8), seg_widths=(8, 8, 8, 8)))
    cfg = OptimConfig(cls_lr=1e-3, seg_lr=2e-3, cls_encoder_lr_scale=0.5, seg_encoder_lr_scale=0.1)
    (cls_opt, seg_opt), schedulers = build_optimizers(model, cfg)
    for opt, branch, lr, scale in (
        (cls_opt, model.cls, 1e-3, 0.5),
        (seg_opt, model.seg, 2e-3, 0.1),
    ):
        rest, enc = opt.param_groups
        assert rest["lr"] == lr and enc["lr"] == pytest.approx(lr * scale)
        assert {id(p) for p in enc["params"]} == {id(p) for p in branch.encoder.parameters()}
        assert len(rest["params"]) + len(enc["params"]) == len(list(branch.parameters()))
    for s in schedulers:
        s.step()  # the poly schedule scales every group alike
    assert seg_opt.param_groups[1]["lr"] / seg_opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="optim.seg_encoder_lr_scale"):
        OptimConfig(seg_encoder_lr_scale=0.0)
