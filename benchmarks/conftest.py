"""pytest options and parametrisation of the benchmark suites.

Each suite module defines ``shapes(device_type, large)`` and ``dtypes(device_type)``; the
``shape`` and ``dtype`` arguments of its tests are parametrised from them here, so that one module
holds the CPU sizes, the GPU target sizes, and the larger sizes behind
``--hermes-large``.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hermes benchmarks")
    group.addoption(
        "--hermes-large",
        action="store_true",
        default=False,
        help="add the larger shapes (minutes more on a CPU; the GPU target sizes)",
    )


def _device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    large = metafunc.config.getoption("--hermes-large")
    module = metafunc.module
    if "shape" in metafunc.fixturenames:
        shapes = module.shapes(_device_type(), large)
        metafunc.parametrize("shape", shapes, ids=[s.id for s in shapes])
    if "dtype" in metafunc.fixturenames:
        dtypes = module.dtypes(_device_type())
        metafunc.parametrize("dtype", dtypes, ids=[str(d).removeprefix("torch.") for d in dtypes])


@pytest.fixture
def large(request: pytest.FixtureRequest) -> bool:
    """Whether ``--hermes-large`` was given."""
    return bool(request.config.getoption("--hermes-large"))


_SKIPPED: list[dict[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped case with its reason, for the JSON (``report.py`` lists them)."""
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append({"name": report.nodeid, "reason": reason.removeprefix("Skipped: ")})


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict
) -> None:
    output_json["hermes_skipped"] = list(_SKIPPED)
