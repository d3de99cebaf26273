"""The options of a dataset run as one validated object, `DatasetJob`, and the generate() arguments they make."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..drafters.suffix_cache import SuffixCache
from . import option_checks as checks


@dataclass(frozen=True)
class DatasetJob:
    """What a dataset run is asked to do, checked once when built: a bad option is an `OptionError` (a ValueError)
    naming it.

    Greedy unless `do_sample`; `temperature`, `top_p`, `top_k` as in generate(), used when sampling (top-k off
    unless given). `num_draft_tokens` (>= 1 or "auto"), `draft_confidence_threshold` and `prompt_lookup_num_tokens`
    go to speculoos' generate(); `suffix_cache` is None, True (one cache for the run), a path (loaded if the file
    exists, saved at the end) or a `speculoos_hf.SuffixCache`. `generation_kwargs` go to generate() as they are,
    those the job owns refused. `model` names what generates the records (the command: its --target, --tokenizer
    and --dtype); it is stored with the options that shape a record (`record_options`)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    batch_size: int = 8
    num_draft_tokens: int | str | None = None
    draft_confidence_threshold: float | None = None
    prompt_lookup_num_tokens: int | None = None
    suffix_cache: Any = None
    chat_template: bool = False
    stop_strings: tuple[str, ...] | None = None
    seed: int = 0
    prompt_field: str = "prompt"
    id_field: str = "id"
    retry_errors: bool = False
    progress: bool = True
    generation_kwargs: Mapping[str, Any] | None = None
    model: str | None = None

    def __post_init__(self):
        checks.integer("max_new_tokens", self.max_new_tokens, 1)
        checks.integer("batch_size", self.batch_size, 1)
        checks.integer("seed", self.seed, None)
        if self.num_draft_tokens is not None and self.num_draft_tokens != "auto":
            checks.integer("num_draft_tokens", self.num_draft_tokens, 1, also="or 'auto'")
        if self.prompt_lookup_num_tokens is not None:
            checks.integer("prompt_lookup_num_tokens", self.prompt_lookup_num_tokens, 1)
        if self.top_k is not None:
            checks.integer("top_k", self.top_k, 0)
        checks.number("temperature", self.temperature, lambda t: t > 0, "> 0")
        checks.number("top_p", self.top_p, lambda p: 0 < p <= 1, "in (0, 1]")
        checks.number("draft_confidence_threshold", self.draft_confidence_threshold, lambda c: 0 <= c < 1,
                      "a probability in [0, 1)")
        checks.sampling_only(self)
        for name in ("prompt_field", "id_field"):
            checks.text(name, getattr(self, name))
        if self.model is not None:
            checks.text("model", self.model)
        object.__setattr__(self, "stop_strings", checks.stop_strings(self.stop_strings))
        object.__setattr__(self, "generation_kwargs", checks.generation_kwargs(self.generation_kwargs))
        _check_suffix_cache(self.suffix_cache)

    @classmethod
    def build(cls, job: DatasetJob | None, options: Mapping[str, Any]) -> DatasetJob:
        """`job` as it is, or a job made of keyword options (not both)."""
        if job is None:
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise TypeError(f"generate_dataset() got unknown options {unknown}; known: {sorted(known)}")
            return cls(**options)
        if options:
            raise TypeError(f"pass either job= or options, not both (got job and {sorted(options)})")
        if not isinstance(job, cls):
            raise TypeError(f"job must be a DatasetJob, got {type(job).__name__}")
        return job

    @property
    def wants_suffix_cache(self) -> bool:
        return self.suffix_cache is not None and self.suffix_cache is not False

    def speculative(self, draft) -> bool:
        """Whether generation goes through speculoos (a draft, prompt lookup or a suffix cache) or plain generate()."""
        return draft is not None or self.prompt_lookup_num_tokens is not None or self.wants_suffix_cache

    def generate_kwargs(self, tokenizer, pad_id: int) -> dict:
        """generate()'s arguments for this job (those of plain and speculative generation alike)."""
        kwargs: dict = dict(max_new_tokens=self.max_new_tokens, do_sample=bool(self.do_sample), pad_token_id=pad_id)
        if self.do_sample:
            kwargs.update(temperature=1.0 if self.temperature is None else self.temperature,
                          top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0)
        if self.stop_strings:
            kwargs.update(stop_strings=list(self.stop_strings), tokenizer=tokenizer)
        kwargs.update(self.generation_kwargs or {})
        return kwargs

    def speculative_kwargs(self, suffix_cache=None) -> dict:
        """speculoos' own generate() arguments, each only where asked for."""
        kwargs = {
            "num_draft_tokens": self.num_draft_tokens,
            "draft_confidence_threshold": self.draft_confidence_threshold,
            "prompt_lookup_num_tokens": self.prompt_lookup_num_tokens,
            "suffix_cache": suffix_cache,
        }
        return {k: v for k, v in kwargs.items() if v is not None}

    def record_options(self) -> dict:
        """The options that shape a record's content, written in every record: a resume under others is refused.
        Drafting options (draft, K, lookup, cache) are left out: they change speed, never the distribution."""
        options: dict = dict(max_new_tokens=self.max_new_tokens, do_sample=bool(self.do_sample),
                             stop_strings=list(self.stop_strings) if self.stop_strings else None,
                             chat_template=bool(self.chat_template))
        if self.do_sample:  # as generate() gets them
            options.update(temperature=1.0 if self.temperature is None else self.temperature,
                           top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, seed=self.seed)
        if self.generation_kwargs:
            options["generation_kwargs"] = {k: _stable(v) for k, v in self.generation_kwargs.items()}
        if self.model is not None:
            options["model"] = self.model
        return options

    def batch_seed(self, first_index: int) -> int:
        """The seed of the batch whose first record has this index: the same on any number of processes."""
        return (self.seed * 1_000_003 + first_index) % (2**63)


def _stable(value):
    """`value` as the records state it: itself where it is JSON, else its type (an object's text would hold its
    address, different at every run)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    return value


def _check_suffix_cache(value) -> None:
    """None, False, True, a path, or a SuffixCache; anything but None/False needs speculoos_hf.drafters.suffix_cache."""
    if value is None or value is False:
        return
    cache_class = suffix_cache_class()
    if value is True or isinstance(value, (str, os.PathLike)) or isinstance(value, cache_class):
        return
    raise checks.OptionError("suffix_cache", f"must be True, a file path or a SuffixCache, got {type(value).__name__}")


def suffix_cache_class():
    """`speculoos_hf.drafters.suffix_cache.SuffixCache`."""
    return SuffixCache
