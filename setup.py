"""The optional compiled mask kernel; everything else is declared in pyproject.toml.

``optional=True``: where no C compiler is at hand the install goes on without it and
:mod:`mcdropout.masks` draws the same masks with numpy.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mcdropout._maskkernel", ["mcdropout/_maskkernel.c"], optional=True)])
