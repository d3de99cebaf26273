"""Checks of a dataset job's option values: each refusal is an `OptionError` naming the option (the command line
turns the name into its flag)."""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Mapping

# generate() arguments the tool sets itself, or that would make the records wrong: refused in generation_kwargs
OWNED_KWARGS = {
    "max_new_tokens": "it is the job's own max_new_tokens",
    "max_length": "the job's max_new_tokens bounds every row",
    "min_length": "use min_new_tokens (prompts have different lengths)",
    "do_sample": "it is the job's own do_sample",
    "temperature": "it is the job's own temperature",
    "top_p": "it is the job's own top_p",
    "top_k": "it is the job's own top_k",
    "stop_strings": "it is the job's own stop_strings",
    "tokenizer": "the run passes its tokenizer",
    "pad_token_id": "the run pads with the tokenizer's pad id",
    "num_draft_tokens": "it is the job's own num_draft_tokens",
    "draft_confidence_threshold": "it is the job's own draft_confidence_threshold",
    "prompt_lookup_num_tokens": "it is the job's own prompt_lookup_num_tokens",
    "suffix_cache": "it is the job's own suffix_cache",
    "draft_model": "the draft is generate_dataset's own argument",
    "assistant_model": "the draft is generate_dataset's own argument",
    "input_ids": "the run passes each batch's prompts",
    "inputs": "the run passes each batch's prompts",
    "attention_mask": "the run passes each batch's mask",
    "generation_config": "pass its fields as generation_kwargs",
    "stopping_criteria": "a record must see where its row ends: use stop_strings",
    "max_time": "a row cut by time would read as finished: bound rows with max_new_tokens",
    "streamer": "records are written per batch",
}


class OptionError(ValueError):
    """A bad option value: `option` is the option's name, `reason` what is wrong with the value."""

    def __init__(self, option: str, reason: str):
        super().__init__(f"{option} {reason}")
        self.option, self.reason = option, reason


def integer(name: str, value, minimum: int | None, also: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise OptionError(name, f"must be an integer{bound}{' ' + also if also else ''}, got {value!r}")


def number(name: str, value, ok, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise OptionError(name, f"must be {what}, got {value!r}")


def text(name: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise OptionError(name, f"must be a non-empty string, got {value!r}")


def stop_strings(value) -> tuple[str, ...] | None:
    if value is None or (not isinstance(value, str) and len(value) == 0):
        return None
    strings = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(s, str) and s for s in strings):
        raise OptionError("stop_strings", f"must be non-empty strings, got {value!r}")
    return strings


def sampling_only(job) -> None:
    """temperature, top_p and top_k change nothing in greedy decoding: given without do_sample, they are a mistake."""
    for name in ("temperature", "top_p", "top_k"):
        if getattr(job, name) is not None and not job.do_sample:
            raise OptionError(name, "applies only when sampling: add do_sample (--do-sample); greedy decoding ignores it")


def generation_kwargs(value) -> Mapping[str, Any] | None:
    """The extra generate() arguments, read-only; those the tool owns, or that would make records wrong, refused."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise OptionError("generation_kwargs", f"must be a mapping of generate() arguments, got {type(value).__name__}")
    for key in value:
        if key in OWNED_KWARGS:
            raise OptionError("generation_kwargs", f"cannot set {key!r}: {OWNED_KWARGS[key]}")
    n = value.get("num_return_sequences", 1)
    if n != 1:
        raise OptionError("generation_kwargs", f"cannot set num_return_sequences={n!r}: a record holds one completion "
                          "per prompt; for n samples of a prompt, give it n times in the input (with distinct ids)")
    return MappingProxyType(dict(value))
