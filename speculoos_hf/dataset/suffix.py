"""The SuffixCache a run drafts through (prompt lookup from earlier prompts and outputs): one the caller gave, a
new one for the run, or one kept in a file (loaded if it exists, saved at the end)."""

from __future__ import annotations

import os
from pathlib import Path

from .job import suffix_cache_class


class RunSuffixCache:
    """The run's cache and, where it lives in a file, where to save it."""

    def __init__(self, cache, path: Path | None = None):
        self.cache = cache
        self.path = path

    @classmethod
    def open(cls, option) -> RunSuffixCache | None:
        """The cache a job's `suffix_cache` option asks for (None: no cache)."""
        if option is None or option is False:
            return None
        cache_class = suffix_cache_class()
        if option is True:
            return cls(cache_class())
        if isinstance(option, (str, os.PathLike)):
            path = Path(option)
            return cls(cache_class.load(path) if path.exists() else cache_class(), path)
        return cls(option)

    def save(self) -> None:
        """Write the cache back to its file (a cache given as an object stays the caller's to keep)."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.cache.save(self.path)
