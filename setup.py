"""Builds the Cython extensions in kinesyslog/_fast; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

FAST_MODULES = ["framing", "syslog", "ring"]

extensions = [
    Extension(f"kinesyslog._fast.{name}", [f"kinesyslog/_fast/{name}.pyx"], extra_compile_args=["-O2"])
    for name in FAST_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
