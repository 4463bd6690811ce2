"""Typed training configuration: dataclasses, YAML presets and ``a.b.c=value`` overrides.

>>> cfg = load_config("default", ["optim.steps=100", "method.weights.contrast_img=0.0"])

A preset is a name in ``hermes/configs/`` (``default``: the CPU phantom run; ``paper``: the
paper's settings) or a path to a YAML file. Unknown keys and values of the wrong type are
rejected with a ``ValueError`` naming the field (e.g. ``optim.steps``); each section's own
checks (``__post_init__``) reject bad values the same way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hermes.checks import require
from hermes.data import DataConfig
from hermes.eval.evaluate import TTA
from hermes.eval.metrics import METRICS
from hermes.method.config import MethodConfig
from hermes.models import ModelConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "triton", "cpp", "cuda")
WARMUP_EPOCHS_OF = ("labeled", "unlabeled")
# The networks take images whose side is a multiple of this (five stride-2 stages; the saliency
# map and the decoder's skip connections need it).
IMAGE_SIZE_MULTIPLE = 32


CLS_OPTIMIZERS = ("sgd", "adamw")
# Model settings that a training config keeps elsewhere, with their one home there.
MOVED = {"image_size": "data.image_size", "backend": "backend"}
# method.detach_junctions (True: L_itc trains the segmentation branch alone; False: both
# branches) became method.itc_trains, which can also name the classification branch.
JUNCTIONS_TO_ITC_TRAINS = {True: "seg", False: "both"}


@dataclass
class OptimConfig:
    """The paper's two optimisers and poly schedule (the paper's optimisation).

    Classification branch: SGD (``cls_lr``, ``cls_momentum``, ``cls_weight_decay``), or AdamW
    with ``cls_optimizer: adamw`` (``cls_lr``, ``cls_weight_decay``; for fine-tuning pretrained
    encoders on a CPU budget); segmentation branch: Adam (``seg_lr``, ``seg_weight_decay``); both
    decay as
    ``lr * (1 - t / steps)^poly_power``. Each branch's pretrained encoder learns at
    ``cls_encoder_lr_scale`` / ``seg_encoder_lr_scale`` times its branch's rate (1: the paper's
    single rate per branch). ``grad_clip`` (max global norm per branch) is off
    (``None``) in the paper.
    """

    steps: int = 3000
    cls_optimizer: str = "sgd"
    cls_lr: float = 1e-4
    cls_momentum: float = 0.9
    cls_weight_decay: float = 1e-4
    seg_lr: float = 1e-4
    seg_weight_decay: float = 0.0
    cls_encoder_lr_scale: float = 1.0
    seg_encoder_lr_scale: float = 1.0
    poly_power: float = 0.9
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        require(self.steps >= 1, "optim.steps", "an int >= 1", self.steps)
        require(
            self.cls_optimizer in CLS_OPTIMIZERS,
            "optim.cls_optimizer",
            f"one of {CLS_OPTIMIZERS}",
            self.cls_optimizer,
        )
        for name in (
            "cls_lr",
            "seg_lr",
            "cls_encoder_lr_scale",
            "seg_encoder_lr_scale",
            "poly_power",
        ):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, f"optim.{name}", "a number > 0", value)
        for name in ("cls_momentum", "cls_weight_decay", "seg_weight_decay"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"optim.{name}", "a number >= 0", value)
        if self.grad_clip is not None:
            require(self.grad_clip > 0, "optim.grad_clip", "a number > 0 or null", self.grad_clip)


@dataclass
class EvalConfig:
    """Periodic evaluation on the test split. ``every``: steps between evaluations (0: only at
    the end); ``best_metric``: the metric that selects ``best.pt`` (higher is better);
    ``max_batches``: cap on test batches per evaluation (``None``: all); ``figure_images``:
    test images in the predicted-mask figure; ``tta``: test-time augmentation, ``none`` or
    ``hflip`` (the mean of the softmaxes over each image and its mirror image; twice the
    evaluation's cost)."""

    every: int = 500
    best_metric: str = "dice_lesion"
    max_batches: int | None = None
    figure_images: int = 8
    tta: str = "none"

    def __post_init__(self) -> None:
        require(self.every >= 0, "eval.every", "an int >= 0", self.every)
        require(
            self.best_metric in METRICS, "eval.best_metric", f"one of {METRICS}", self.best_metric
        )
        if self.max_batches is not None:
            require(
                self.max_batches >= 1, "eval.max_batches", "an int >= 1 or null", self.max_batches
            )
        require(self.figure_images >= 0, "eval.figure_images", "an int >= 0", self.figure_images)
        require(self.tta in TTA, "eval.tta", f"one of {TTA}", self.tta)


@dataclass
class DistributedConfig:
    """Multi-worker training on Ray (+ DeepSpeed), used by ``hermes.train.distributed``.
    ``workers``: number of Ray workers (1: the single-process trainer); ``use_gpu``: one GPU per
    worker; ``deepspeed_config``: path of a DeepSpeed JSON config or a name in
    ``hermes/configs/deepspeed/`` (``None``: ``zero1``); ``address``: Ray address (``None``: the job's
    cluster, else a local Ray); ``max_failures``: worker-group restarts from the last checkpoint;
    ``cpus_per_worker``: CPUs Ray reserves per worker."""

    workers: int = 1
    use_gpu: bool = False
    deepspeed_config: str | None = None
    address: str | None = None
    max_failures: int = 3
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        require(self.workers >= 1, "distributed.workers", "an int >= 1", self.workers)
        require(
            self.max_failures >= -1, "distributed.max_failures", "an int >= -1", self.max_failures
        )
        require(
            self.cpus_per_worker > 0,
            "distributed.cpus_per_worker",
            "a number > 0",
            self.cpus_per_worker,
        )


@dataclass
class TrainConfig:
    """Everything a training run needs.

    Attributes:
        data, model, method, optim, eval, distributed: the sections.
        name: run name (report titles, TensorBoard tags).
        out_dir: where checkpoints, TensorBoard logs and the report go.
        seed: seeds torch, numpy, random and the data order (per epoch, from ``(seed, epoch)``).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: mixed precision on a GPU (bf16 where supported, else fp16 with loss scaling).
        backend: backend of the three fused ops (``auto``, ``torch``, ``triton``, ``cpp``,
            ``cuda``), passed to them as an argument (the ``HERMES_BACKEND`` environment variable
            is the user's own override and is never written).
        threads: ``torch.set_num_threads`` (``None``: leave torch's default).
        channels_last: keep the networks' weights in the channels-last memory format (on 2 CPU
            cores an EfficientNet-Lite0 step at 128 px took 0.89 s instead of 1.46 s). Single
            process only: with ``distributed.workers > 1`` it is ignored (DeepSpeed's parameter
            broadcast needs contiguous tensors).
        warmup_epochs: if set, ``method.warmup_steps`` becomes this many epochs of the loader
            named by ``warmup_epochs_of`` (the public code warms up 10 epochs); setting both is
            an error.
        warmup_epochs_of: ``"labeled"`` or ``"unlabeled"``: whose epochs ``warmup_epochs``
            counts. The authors' code counts epochs of the unlabeled loader, several times
            longer than the labeled one when labels are few (the ``paper`` preset follows it).
        log_every: steps between TensorBoard/history records (1: every step).
        checkpoint_every: steps between checkpoints (0: only at the end).
        progress: show a tqdm progress bar; without it (and always on Ray workers) the loop
            logs a ``step k/N loss ...`` line about 20 times per run.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    name: str = "hermes"
    out_dir: str = "runs/hermes"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    backend: str = "auto"
    threads: int | None = None
    channels_last: bool = False
    warmup_epochs: float | None = None
    warmup_epochs_of: str = "labeled"
    log_every: int = 1
    checkpoint_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        # The model has one output per data class: model.num_classes is derived, not set.
        classes = len(self.data.classes)
        require(classes in (2, 3), "data.classes", "2 or 3 classes", self.data.classes)
        if self.model.num_classes != classes:
            self.model = dataclasses.replace(self.model, num_classes=classes)
        target = self.method.alignment_target
        if target is not None:
            require(
                len(target) == classes,
                "method.alignment_target",
                f"one frequency per class of data.classes {list(self.data.classes)}",
                list(target),
            )
        require(self.device in DEVICES, "device", f"one of {DEVICES}", self.device)
        require(self.backend in BACKENDS, "backend", f"one of {BACKENDS}", self.backend)
        size = self.data.image_size
        require(
            size % IMAGE_SIZE_MULTIPLE == 0,
            "data.image_size",
            f"a multiple of {IMAGE_SIZE_MULTIPLE} (the networks' input)",
            size,
        )
        require(self.log_every >= 1, "log_every", "an int >= 1", self.log_every)
        require(
            self.checkpoint_every >= 0, "checkpoint_every", "an int >= 0", self.checkpoint_every
        )
        if self.threads is not None:
            require(self.threads >= 1, "threads", "an int >= 1 or null", self.threads)
        require(
            self.warmup_epochs_of in WARMUP_EPOCHS_OF,
            "warmup_epochs_of",
            f"one of {WARMUP_EPOCHS_OF}",
            self.warmup_epochs_of,
        )
        if self.warmup_epochs is not None and self.method.warmup_steps:
            raise ValueError(
                f"warmup_epochs: {self.warmup_epochs!r} and method.warmup_steps: "
                f"{self.method.warmup_steps} both set the warm-up; set one (method.warmup_steps=0 "
                "to count epochs)"
            )
        if self.warmup_epochs is not None:
            require(
                self.warmup_epochs >= 0,
                "warmup_epochs",
                "a number >= 0 or null",
                self.warmup_epochs,
            )


# ---------------------------------------------------------------------- dict <-> dataclass
def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check ``value`` against a field's type annotation, converting lists to tuples and ints
    to floats where the annotation asks for it."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{name}: got {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(
                f"{name}: expected a mapping of {annotation.__name__} fields, got {value!r}"
            )
        return from_dict(annotation, value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an int, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys and wrong types are
    ``ValueError`` naming the dotted field (``prefix.key``)."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ValueError(f"{name}: unknown field; {prefix or 'the config'} has {known}")
        kwargs[key] = _coerce(value, hints[key], name)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        message = str(exc)
        if prefix and not message.startswith(prefix):
            message = f"{prefix}: {message}"
        raise ValueError(message) from None


def train_config_from_dict(tree: dict[str, Any]) -> TrainConfig:
    """:class:`TrainConfig` from a nested mapping (a YAML file's, with overrides applied).

    Besides :func:`from_dict`'s checks: ``model.image_size`` and ``model.backend`` are refused
    with the field that sets them (``data.image_size``, ``backend``), and ``model.num_classes``,
    derived from ``data.classes``, is refused unless it agrees with it."""
    model = tree.get("model")
    if isinstance(model, dict):
        for key, home in MOVED.items():
            if key in model:
                raise ValueError(f"model.{key}: a training config sets it as {home}")
        if "num_classes" in model:
            classes = (tree.get("data") or {}).get("classes", DataConfig.classes)
            if isinstance(classes, (list, tuple)) and model["num_classes"] != len(classes):
                raise ValueError(
                    f"model.num_classes: {model['num_classes']!r}, but data.classes {list(classes)} "
                    f"has {len(classes)}; the model has one output per data class (leave "
                    "model.num_classes out)"
                )
    method = tree.get("method")
    if isinstance(method, dict) and "detach_junctions" in method:
        raise ValueError(
            "method.detach_junctions: replaced by method.itc_trains (true is 'seg', false is "
            "'both'; 'cls' trains the classification branch alone)"
        )
    return from_dict(TrainConfig, tree)


def upgrade_stored(tree: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a checkpoint's) from before ``model.image_size``, ``model.backend`` and
    ``method.detach_junctions`` moved: the first dropped (``data.image_size`` was always the
    input size), the second moved to ``backend`` where that was ``auto``, the third turned into
    ``method.itc_trains`` (``true``: ``seg``, ``false``: ``both``)."""
    tree = dict(tree)
    model = tree.get("model")
    if isinstance(model, dict) and MOVED.keys() & model.keys():
        model = dict(model)
        model.pop("image_size", None)
        backend = model.pop("backend", None)
        if backend is not None and tree.get("backend", "auto") == "auto":
            tree["backend"] = backend
        tree["model"] = model
    method = tree.get("method")
    if isinstance(method, dict) and "detach_junctions" in method:
        method = dict(method)
        method["itc_trains"] = JUNCTIONS_TO_ITC_TRAINS[bool(method.pop("detach_junctions"))]
        tree["method"] = method
    return tree


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a dataclass, e.g. for YAML or a checkpoint."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.steps=100"`` -> ``("optim.steps", 100)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value (e.g. optim.steps=100), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {key}: cannot parse {raw!r} ({exc})") from None
    return key, value


def preset_path(preset: str) -> Path:
    """A preset name (``default``, ``paper``) or a YAML path -> the file (must exist)."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"config {preset!r}: no file {path} (presets: {names})")
    return path


def load_config(
    preset: str | None = "default",
    overrides: list[str | tuple[str, Any]] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Load a preset (name or YAML path; ``None``: the dataclass defaults, or ``base``, a plain
    config dict such as a checkpoint's) and apply overrides, ``"key=value"`` strings (the value
    parsed as YAML) or ``(key, value)`` pairs, then validate everything."""
    tree: dict[str, Any] = upgrade_stored(dict(base)) if base is not None else {}
    if preset is not None:
        path = preset_path(preset)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"config {path}: expected a mapping at the top level, got {type(loaded).__name__}"
            )
        tree = loaded
    for item in overrides or []:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set(tree, key, value)
    return train_config_from_dict(tree)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (loadable with :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
