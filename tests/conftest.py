"""Shared pytest configuration.

Hypothesis runs without per-example deadlines: the first example of a property test may
include a cold Taichi kernel compile.
"""
import os

from hypothesis import settings

settings.register_profile("npga", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "npga"))
