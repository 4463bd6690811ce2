"""A tiny training configuration shared by the trainer and CLI tests (32 px, a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_MODEL = [
    "model.preset=small",  # random-init ResNet layout at tiny widths (the default is Lite0)
    "model.cls_widths=[8, 8, 16, 16]",
    "model.cls_stem_width=8",
    "model.seg_widths=[8, 8, 16, 16]",
    "model.seg_stem_width=8",
    "model.decoder_channels=[16, 8, 8, 8, 8]",
    "model.embed_dim=16",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "model.consistency_dim=8",
]


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantom-cache")


@pytest.fixture
def tiny_overrides(tmp_path: Path, tiny_settings: list[str]) -> list[str]:
    """Overrides of the default preset for a run of a few seconds (into ``tmp_path/run``)."""
    return [f"out_dir={tmp_path / 'run'}", *tiny_settings]


@pytest.fixture(scope="session")
def tiny_settings(phantom_cache: Path) -> list[str]:
    """:func:`tiny_overrides` without ``out_dir`` (for fixtures that outlive one test)."""
    return [
        f"data.cache_dir={phantom_cache}",
        "data.phantom_size=24",
        "data.phantom_image_size=64",
        "data.image_size=32",
        "data.labeled=8",
        "data.batch_size=4",
        "data.unlabeled_batch_size=4",
        "optim.steps=4",
        "eval.every=2",
        "eval.max_batches=1",
        "eval.figure_images=2",
        "checkpoint_every=0",
        "progress=false",
        "method.warmup_steps=0",
        "method.max_views=2",
        "method.max_samples=16",
        "method.tau_max=0.6",
        "method.tau_min=0.5",
        # SGD 0.01 moves a tiny random network enough in two steps for pseudo-labels to pass
        "optim.cls_optimizer=sgd",
        "optim.cls_lr=0.01",
        "optim.seg_lr=0.001",
        *TINY_MODEL,
    ]
