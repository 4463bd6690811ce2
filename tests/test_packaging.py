"""The package installs as it should: editable and regular, ``kernels/`` as ``hermes.kernels``,
and ``hermes.ops`` stays light (no Ray, DeepSpeed or training engine behind it)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_modules_import_from_the_source_tree():
    out = _run(
        "import hermes, hermes.ops, hermes.kernels; "
        "print(hermes.__file__); print(hermes.ops.__file__); print(hermes.kernels.__file__)"
    )
    hermes_file, ops_file, kernels_file = (Path(p) for p in out.splitlines())
    assert hermes_file == ROOT / "hermes" / "__init__.py"
    assert ops_file == ROOT / "hermes" / "ops" / "__init__.py"
    assert kernels_file == ROOT / "kernels" / "__init__.py"


def test_nothing_is_installed_as_a_top_level_kernels_or_cluster():
    out = _run("import importlib.util as u; print(u.find_spec('kernels'), u.find_spec('cluster'))")
    assert out == "None None"


def test_ops_import_is_light():
    out = _run(
        "import sys, hermes.ops; "
        "print(sorted(m for m in ('ray', 'deepspeed', 'hermes.train', 'hermes.method', "
        "'hermes.models', 'hermes.data', 'triton') if m in sys.modules))"
    )
    assert out == "[]"


def test_regular_wheel_install(tmp_path):
    """Build a wheel (without the compiled extension, for speed) and import from it."""
    env = {**os.environ, "HERMES_NO_CPP": "1", "HERMES_NO_CUDA": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("hermes_ultrasound-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hermes/kernels/__init__.py" in names
    # the presets and DeepSpeed configs are package data (a wheel has no source checkout)
    for data in (
        "configs/default.yaml",
        "configs/experiments/busi_cpu.yaml",
        "configs/deepspeed/zero1.json",
        "configs/deepspeed/zero2_bf16.json",
    ):
        assert f"hermes/{data}" in names, data
    assert not any(n.startswith(("kernels/", "cluster/", "tests/")) for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    out = _run(
        "import hermes.kernels, hermes.ops; print(hermes.kernels.__file__); print(hermes.ops.__file__)",
        PYTHONPATH=str(target),
    )
    found = _run(
        "from hermes.train.distributed.engine import resolve_deepspeed_config as r; print(r('zero2'))",
        PYTHONPATH=str(target),
    )
    assert Path(found).is_relative_to(target), found
    for line in out.splitlines():
        assert Path(line).is_relative_to(target), line
