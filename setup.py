"""The optional compiled kernels (mcdropout/_native.c); everything else is declared in pyproject.toml.

``optional=True``: where no C compiler is at hand the install goes on without it and
the engine draws the same masks with numpy and computes the same statistics with torch.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mcdropout._native", ["mcdropout/_native.c"], optional=True)])
