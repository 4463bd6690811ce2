"""Build script: the Python packages, and (once csrc/ has sources) the extension hermes._C.

`kernels/` is installed as `hermes.kernels` through `package_dir`, so that nothing is installed
as a top-level `kernels` (a popular PyPI name).
"""

from setuptools import find_packages, setup

packages = find_packages(include=["hermes", "hermes.*"])
packages += ["hermes.kernels"] + [
    "hermes.kernels." + p for p in find_packages(where="kernels")
]

setup(
    packages=packages,
    package_dir={"hermes": "hermes", "hermes.kernels": "kernels"},
    ext_modules=[],
)
