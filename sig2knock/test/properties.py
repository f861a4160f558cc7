"""
Hypothesis for the property tests, set up once: derandomized, so that every run (CI's, a
packager's, an installed package's) tries the same examples and a failure reproduces exactly;
and with no example database, so nothing is written into the directory the tests run from.
The property tests import ``given``, ``settings`` and ``st`` from here.
"""

from hypothesis import given, settings, strategies as st


settings.register_profile("sig2knock", derandomize=True, database=None)
settings.load_profile("sig2knock")

__all__ = ["given", "settings", "st"]
