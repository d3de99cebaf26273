"""The SuffixCache a run drafts through (prompt lookup from earlier prompts and outputs): one the caller gave, a
new one for the run, or one kept in a file (loaded if it exists, saved at the end)."""

from __future__ import annotations

import os
from pathlib import Path

from .job import suffix_cache_class
from .option_checks import OptionError
from .store import unwritable


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
            return cls(_load(cache_class, Path(option)), Path(option))
        return cls(option)

    def save(self) -> None:
        """Write the cache back to its file (a cache given as an object stays the caller's to keep)."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.cache.save(self.path)


def _load(cache_class, path: Path):
    """The cache kept in `path`, or a new one where there is no file yet (OptionError: not a cache file)."""
    if not path.exists():
        problem = unwritable(path)  # it is saved there at the end
        if problem is not None:
            raise OptionError("suffix_cache", problem)
        return cache_class()
    if path.is_dir():
        raise OptionError("suffix_cache", f"{path} is a directory, not a suffix cache file")
    try:
        return cache_class.load(path)
    except ValueError as e:
        raise OptionError("suffix_cache", f"cannot be loaded: {e}") from None
