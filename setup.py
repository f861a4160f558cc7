"""
A shim: sig2knock's packaging is declared in pyproject.toml. This file only keeps
``python setup.py ...`` and tools that look for it working.
"""

from setuptools import setup

setup()
