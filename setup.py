"""Build of the optional C kernels; everything else is configured in pyproject.toml.

``neuralode.solvers._fused`` holds fused CPU kernels of the native Runge–Kutta loops (and of
the implicit methods' Newton updates). It needs
no PyTorch headers, only a C compiler; where none is available the build skips it
(``optional=True``) and the solvers use plain tensor operations instead.
"""

import sys

from setuptools import Extension, setup

compile_args = [] if sys.platform == "win32" else ["-O3", "-fopenmp-simd"]

setup(
    ext_modules=[
        Extension(
            "neuralode.solvers._fused",
            sources=["src/neuralode/solvers/_fused.c"],
            extra_compile_args=compile_args,
            optional=True,
        )
    ]
)
