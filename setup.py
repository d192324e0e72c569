"""Build hook for the one compiled part: the PFR encoder's search (diffcodec/csrc/pfrsearch.c).

It is optional: where no C compiler is found the install still succeeds and the encoder uses
the torch implementation of the same search (slower, same results).  The library is loaded
with ctypes (no Python C API), so it works with any Python the wheel is built for.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("diffcodec._pfrsearch", ["diffcodec/csrc/pfrsearch.c"],
                             extra_compile_args=["-O3", "-std=c99", "-pthread"], extra_link_args=["-pthread"],
                             optional=True)])
