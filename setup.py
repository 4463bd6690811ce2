"""Build script: the Python packages and the extension hermes._C (csrc/).

`kernels/` is installed as `hermes.kernels` through `package_dir`, so that nothing is installed
as a top-level `kernels` (a popular PyPI name).

hermes._C is one extension holding the C++ (CPU, OpenMP) kernels and, where CUDA can be built,
the CUDA kernels too:

- the C++ part is built whenever a C++ compiler is present (``HERMES_NO_CPP=1`` skips the whole
  extension; without it the package falls back to the PyTorch references);
- the CUDA part is added when torch is a CUDA build, a CUDA toolkit is found (``CUDA_HOME``)
  and either a GPU is visible or ``HERMES_CUDA=1`` asks for it (a compile check on a machine
  without a GPU); ``HERMES_NO_CUDA=1`` skips it. Architectures: ``TORCH_CUDA_ARCH_LIST``
  (default "8.0;9.0a"). No ``--use_fast_math``: the kernels keep IEEE division, square root,
  ``expf``/``logf`` and denormals, so they are held to the same tolerances as the C++ kernels
  (docs/ops.md, "The CUDA extension: no --use_fast_math").
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys

from setuptools import find_packages, setup

logger = logging.getLogger("hermes.setup")

packages = find_packages(include=["hermes", "hermes.*"])
packages += ["hermes.kernels"] + [
    "hermes.kernels." + p for p in find_packages(where="kernels")
]

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", pattern), recursive=True))


def _cuda_wheel_dirs() -> tuple[list[str], list[str]]:
    """Include and library folders of the pip ``nvidia/cu*`` wheels next to torch (the CUDA
    headers and libraries torch was built against), where they exist."""
    include_dirs: list[str] = []
    library_dirs: list[str] = []
    for site in sys.path:
        for root in sorted(glob.glob(os.path.join(site, "nvidia", "cu*"))):
            if os.path.isdir(os.path.join(root, "include")):
                include_dirs.append(os.path.join(root, "include"))
            if os.path.isdir(os.path.join(root, "lib")):
                library_dirs.append(os.path.join(root, "lib"))
    return include_dirs, library_dirs


def _want_cuda(torch) -> bool:
    """Whether to build the CUDA part. ``HERMES_CUDA=1`` (the compile check) makes a missing
    toolkit or a CPU-only torch an error instead of a silent CPU-only build."""
    from torch.utils import cpp_extension

    if _flag("HERMES_NO_CUDA"):
        return False
    home = cpp_extension.CUDA_HOME
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is not a CUDA build")
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        missing.append(f"no CUDA toolkit with bin/nvcc (CUDA_HOME={home})")
    if missing:
        if _flag("HERMES_CUDA"):
            raise RuntimeError("HERMES_CUDA=1 but the CUDA part cannot be built: " + "; ".join(missing))
        return False
    return _flag("HERMES_CUDA") or torch.cuda.is_available()


def extensions() -> tuple[list, dict]:
    """The extension hermes._C (empty when it cannot or should not be built)."""
    if _flag("HERMES_NO_CPP"):
        return [], {}
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        logger.warning("hermes: no C++ compiler (%s); building without hermes._C", cxx)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    cxx_flags = ["-O3", "-fopenmp"]
    cpu_sources = _sources("hermes_ops.cpp") + _sources("*/*_cpu.cpp")
    if _want_cuda(torch):
        include_dirs, library_dirs = _cuda_wheel_dirs()
        ext = cpp_extension.CUDAExtension(
            "hermes._C",
            cpu_sources + _sources("*/*.cu"),
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            # No --use_fast_math (approximate exp/log/division, denormals flushed): see docs/ops.md.
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=False,
        )
    else:
        ext = cpp_extension.CppExtension(
            "hermes._C",
            cpu_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class BuildExt(base):
        """Keeps the object files in build/ext-temp when the caller (pip's editable install)
        would put them in a fresh temporary folder, so that `make setup` rebuilds incrementally."""

        def finalize_options(self) -> None:
            super().finalize_options()
            if not os.path.abspath(self.build_temp).startswith(ROOT + os.sep):
                self.build_temp = os.path.join(ROOT, "build", "ext-temp")

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = extensions()

setup(
    packages=packages,
    package_dir={"hermes": "hermes", "hermes.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
