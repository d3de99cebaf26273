"""Alias package so the seed README's `from speculoos import SpeculativeSampler` works; everything is speculoos_hf."""

from speculoos_hf import *  # noqa: F401,F403
from speculoos_hf import __all__, __version__  # noqa: F401
