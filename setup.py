"""Builds the Cython extensions in kinesyslog/_fast; everything else is in pyproject.toml.

Compiler directives live in each .pyx header, so `cythonize -i` and this file agree.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

FAST_DIR = Path("kinesyslog/_fast")

extensions = [
    Extension(f"kinesyslog._fast.{pyx.stem}", [str(pyx)], extra_compile_args=["-O2"])
    for pyx in sorted(FAST_DIR.glob("*.pyx"))
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
