"""The suffix caches of a benchmark run: one `SuffixCache` per (method, group of similar requests), so that a
suffix-cache method drafts, on each request, from the earlier requests of the same group in order and from nothing
else (prompts without a group share one cache per method for the whole run)."""

from __future__ import annotations

from typing import Callable

from ..drafters.suffix_cache import SuffixCache


def suffix_cache_class():
    """`speculoos_hf.SuffixCache`."""
    return SuffixCache


class CacheBook:
    """Hands each suffix-cache method the cache of the prompt's group, made on first use by `factory()`."""

    def __init__(self, factory: Callable[[], object]):
        self.factory = factory
        self._caches: dict[tuple, object] = {}

    @classmethod
    def of_suffix_caches(cls, max_tokens: int | None = None) -> "CacheBook":
        """A book of `SuffixCache(max_tokens=max_tokens)` (None: the class's default bound)."""
        SuffixCache = suffix_cache_class()
        return cls(lambda: SuffixCache() if max_tokens is None else SuffixCache(max_tokens=max_tokens))

    def cache_for(self, method, prompt):
        """The cache `method` uses on `prompt` (None for a method without one)."""
        if not method.suffix_cache:
            return None
        key = (method.name, prompt.group)
        if key not in self._caches:
            self._caches[key] = self.factory()
        return self._caches[key]

    def scratch(self, method):
        """A throwaway cache for a warm-up call (None for a method without one): the group caches stay clean."""
        return self.factory() if method.suffix_cache else None
