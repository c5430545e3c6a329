"""Build script: the Python packages plus an optional pybind11 extension (``fastalign._C``).

``kernels/`` is installed as ``fastalign.kernels`` (never as a top-level ``kernels``: Hugging
Face ships an unrelated package of that name). The C++ extension is optional: without a
compiler or pybind11 the build still succeeds and fastalign uses the pure-Python twins.
"""

import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extension when possible; warn (never fail the install) when not."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 - any toolchain failure means "no extension"
            self._warn(error)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001
            self._warn(error)

    @staticmethod
    def _warn(error):
        print(
            f"WARNING: fastalign C++ extension not built ({error}); the pure-Python twin is used.",
            file=sys.stderr,
        )


def extension_modules():
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("WARNING: pybind11 not found; building fastalign without its C++ extension.", file=sys.stderr)
        return []
    return [
        Pybind11Extension(
            "fastalign._C",
            ["csrc/extension.cpp", "csrc/bin_packing.cpp", "csrc/packing_layout.cpp"],
            cxx_std=17,
        )
    ]


setup(
    packages=find_packages(include=["fastalign", "fastalign.*"]) + ["fastalign.kernels"],
    package_dir={"fastalign.kernels": "kernels"},
    ext_modules=extension_modules(),
    cmdclass={"build_ext": OptionalBuildExt},
)
