"""What one speculative call is given: its options (one frozen object, validated once), the request stock generate()
prepared, and the user's objects. The glue (generation.py) builds them; the drafter factory and the loop read them.

Like vLLM's `SpeculativeConfig` and llama.cpp's `common_params_speculative`: every speculative option is named
here once, resolved once (keyword, else the generation config in force) and checked once.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from .checks import generate_setting, integer_at_least_one
from ..trees.tree import draft_tree_setting

# num_draft_tokens=None (or "auto"): a cost model picks each round's k up to this, and 0 where drafting cannot pay
AUTO_MAX_DRAFT_TOKENS = 12
DEFAULT_NUM_DRAFT_TOKENS = 5  # the seed API's K
DRAFT_QUANTIZATIONS = (None, "int8", "auto")
DEFAULT_LOOKUP_TOKENS = 32  # prompt_lookup_num_tokens when suffix_cache= alone asks for prompt lookup
COUNT_LIMIT = 2**63  # counts at or above it fit no tensor index: refused (below it, capped by what can be drafted)
MAX_ROUND_DRAFTS = 1024  # no round drafts more (acceptance decays along a draft: longer never pays); speed only

# generate() keywords only speculoos knows: stock generate() must never see them
SPECULOOS_OPTIONS = ("num_draft_tokens", "draft_confidence_threshold", "block_verification", "draft_quantization",
                     "suffix_cache", "draft_tree")
# generate() keywords stock knows too: they reach stock when speculoos does not take the call
SHARED_OPTIONS = ("prompt_lookup_num_tokens", "max_matching_ngram_size", "tokenizer", "assistant_tokenizer")
# read from the generation config in force when not given as keywords
_FROM_GENERATION_CONFIG = ("prompt_lookup_num_tokens", "max_matching_ngram_size")


@dataclass(frozen=True)
class SpeculativeOptions:
    """The speculative options of one generate() call, checked when built.

    num_draft_tokens:  drafts per round (int), or "auto" (None given): a cost model picks each round's k.
    draft_confidence_threshold: stop drafting a round once the draft's confidence falls below it (0..1).
    prompt_lookup_num_tokens / max_matching_ngram_size: copy continuations from the context (alone or hybrid).
    block_verification: sampling verifies each block jointly (Sun et al. 2024).
    draft_tree:        "auto" (token trees where the cost model says they pay), False, or a branching per depth
                       (`tree.draft_tree_setting`; see tree_round.py).
    draft_quantization: "auto" (default: "int8" where the draft's step is a large share of a round on CPU, see
                       `drafters.prepared.int8_pays`), "int8" (a copy made once and reused), None (as given).
    suffix_cache:      a `speculoos_hf.SuffixCache` of earlier calls' text for prompt lookup, or None.
    tokenizer / assistant_tokenizer: the target's and the draft's tokenizers (stop strings, two vocabularies).
    asked_draft_tokens: what `within` capped, as asked (the stats report it); None: nothing was capped.
    """

    num_draft_tokens: int | str | None = None
    draft_confidence_threshold: float | None = None
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None
    block_verification: bool = False
    draft_quantization: str | None = "auto"
    suffix_cache: Any = None
    draft_tree: Any = "auto"
    lookup_only: bool = False  # no draft model: prompt lookup alone (its k is at most prompt_lookup_num_tokens)
    tokenizer: Any = field(default=None, repr=False)
    assistant_tokenizer: Any = field(default=None, repr=False)
    asked_draft_tokens: int | None = None

    def __post_init__(self) -> None:
        lookup = _optional_count(self.prompt_lookup_num_tokens, "prompt_lookup_num_tokens")
        ngram = _optional_count(self.max_matching_ngram_size, "max_matching_ngram_size")
        given = self.num_draft_tokens
        auto = given is None or (isinstance(given, str) and given == "auto")
        threshold = self.draft_confidence_threshold
        if threshold is not None and not (_real(threshold) and 0.0 <= float(threshold) < 1.0):
            raise ValueError(f"draft_confidence_threshold must be a probability in [0, 1), got {threshold!r}.")
        quantization = self.draft_quantization
        if not (quantization is None or isinstance(quantization, str) and quantization in DRAFT_QUANTIZATIONS):
            raise ValueError(
                f"draft_quantization must be one of {DRAFT_QUANTIZATIONS}, got {self.draft_quantization!r}."
            )
        if not isinstance(self.block_verification, (bool, np.bool_)):
            raise ValueError(f"block_verification must be True or False, got {self.block_verification!r}.")
        _check_suffix_cache(self.suffix_cache)
        normal = {
            "num_draft_tokens": "auto" if auto else _count(given, "num_draft_tokens"),
            "draft_confidence_threshold": None if threshold is None else float(threshold),
            "prompt_lookup_num_tokens": lookup,
            "max_matching_ngram_size": ngram,
            "block_verification": bool(self.block_verification),
            "draft_tree": draft_tree_setting(self.draft_tree),
        }
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @property
    def auto_k(self) -> bool:
        """A cost model picks each round's k (up to `max_draft_tokens`)."""
        return self.num_draft_tokens == "auto"

    @property
    def model_draft_tokens(self) -> int:
        """The most tokens a draft model (or drafter object) drafts per round: K given, else AUTO_MAX_DRAFT_TOKENS.
        Beside prompt lookup too: a copy may be longer (up to prompt_lookup_num_tokens), the model's drafts never."""
        return AUTO_MAX_DRAFT_TOKENS if self.auto_k else self.num_draft_tokens

    @property
    def max_draft_tokens(self) -> int:
        """The most drafts a round proposes: the model's K or prompt lookup's copy, whichever is longer."""
        if self.auto_k and self.lookup_only:
            return self.prompt_lookup_num_tokens
        return max(self.model_draft_tokens, self.prompt_lookup_num_tokens or 0)

    @property
    def reported_draft_tokens(self) -> int:
        """The stats' num_draft_tokens: K as given (before `within` capped it); under "auto" the most a round may
        draft: AUTO_MAX_DRAFT_TOKENS beside a model, prompt_lookup_num_tokens for prompt lookup alone."""
        if self.asked_draft_tokens is not None:
            return self.asked_draft_tokens
        return self.prompt_lookup_num_tokens if self.auto_k and self.lookup_only else self.model_draft_tokens

    def within(self, room: int) -> "SpeculativeOptions":
        """These options for a call that can draft at most `room` tokens per round (the tokens it may generate,
        but one): counts capped by it and by MAX_ROUND_DRAFTS, so that nothing is allocated or weighed for drafts
        that cannot happen or cannot pay (the output never depends on them)."""
        room = min(max(int(room), 1), MAX_ROUND_DRAFTS)
        capped = {"prompt_lookup_num_tokens": None if self.prompt_lookup_num_tokens is None
                  else min(self.prompt_lookup_num_tokens, room)}
        if not self.auto_k:
            capped["num_draft_tokens"] = min(self.num_draft_tokens, room)
        return replace(self, **capped, asked_draft_tokens=self.reported_draft_tokens)

    @classmethod
    def from_generate(cls, model, generation_config, draft_model, kwargs: dict) -> "SpeculativeOptions":
        """The options of a generate() call, taken out of its keyword arguments `kwargs` (in place). Prompt lookup
        comes from the keyword, else from the generation config in force, else `DEFAULT_LOOKUP_TOKENS` when a
        suffix_cache is given; alone it copies up to prompt_lookup_num_tokens per round, capped by the cost model where
        a longer pass stops paying (a fixed num_draft_tokens turns the cap off)."""
        values = {name: generate_setting(model, generation_config, kwargs, name) for name in _FROM_GENERATION_CONFIG}
        for name in SPECULOOS_OPTIONS + SHARED_OPTIONS:
            value = kwargs.pop(name, getattr(cls, name, None))  # not given: the field's default
            if name not in values:
                values[name] = value
        _check_suffix_cache(values["suffix_cache"])
        if values["suffix_cache"] is not None and draft_model is not None and not isinstance(draft_model,
                                                                                             PreTrainedModel):
            raise ValueError("suffix_cache feeds prompt lookup, which combines with a draft model, not with a drafter "
                             "object: pass suffix_cache= without draft_model, or with a causal LM as draft_model.")
        if values["prompt_lookup_num_tokens"] is None and values["suffix_cache"] is not None:
            values["prompt_lookup_num_tokens"] = DEFAULT_LOOKUP_TOKENS
        if draft_model is None and values["prompt_lookup_num_tokens"] is None:
            raise ValueError("Speculative generation needs draft_model=<a causal LM or a drafter> or "
                             "prompt_lookup_num_tokens=N.")
        return cls(**values, lookup_only=draft_model is None)


def wants_prompt_lookup(model, generation_config, kwargs: dict) -> bool:
    """Whether the call asks for prompt lookup (keyword, else the generation config in force, or a suffix_cache)."""
    if kwargs.get("suffix_cache") is not None:
        return True
    return generate_setting(model, generation_config, kwargs, "prompt_lookup_num_tokens") is not None


def drop_speculoos_options(kwargs: dict) -> None:
    """A call without draft_model or prompt lookup: refuse speculoos options given anyway, and take the unset ones
    out of `kwargs` (in place) so that stock generate() never sees them."""
    given = [name for name in SPECULOOS_OPTIONS if kwargs.get(name) is not None and kwargs.get(name) is not False]
    if given:
        raise ValueError(
            f"{' / '.join(SPECULOOS_OPTIONS)} need a drafter, but {', '.join(given)} was given without draft_model: "
            "pass draft_model=<a causal LM> (or prompt_lookup_num_tokens=N)."
        )
    for name in SPECULOOS_OPTIONS:
        kwargs.pop(name, None)


@dataclass(frozen=True)
class DecodeRequest:
    """The prompts and the generation settings stock generate() resolved for them.

    input_ids:      [B, P] left-padded prompts.
    max_length:     committed length (prompt included) at which every row stops.
    attention_mask: [B, P] 0 on padding, or None (no padding).
    do_sample:      sample (else greedy).
    eos_token_id:   the EOS ids in force (an int, a list or a tensor), or None.
    pad_token_id:   what finished rows are padded with (None: the first EOS id, else 0).
    vocab_size:     V, the id range both distributions live on (None: the target's vocabulary).
    """

    input_ids: torch.Tensor
    max_length: int
    attention_mask: torch.Tensor | None = None
    do_sample: bool = False
    eos_token_id: Any = None
    pad_token_id: int | None = None
    vocab_size: int | None = None


@dataclass(frozen=True)
class UserObjects:
    """The objects a call brings: logits processors and stopping criteria (as stock generate() built them, the
    user's own included), a streamer, and the target's empty cache."""

    logits_processor: Any = ()
    stopping_criteria: Any = None
    streamer: Any = None
    cache: Any = None


def _optional_count(value, name: str) -> int | None:
    return None if value is None else _count(value, name)


def _count(value, name: str) -> int:
    """An integer >= 1 that fits a tensor index, else ValueError."""
    number = integer_at_least_one(value, name)
    if number >= COUNT_LIMIT:
        raise ValueError(f"{name} must be an integer in [1, 2**63), got {value!r}.")
    return number


def _real(value) -> bool:
    """A real number (numpy's and 0-d tensors' included), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_suffix_cache(cache) -> None:
    """suffix_cache is a `SuffixCache` or None: anything else (a path, a list, False, a drafter) is refused by name."""
    from ..drafters.suffix_cache import SuffixCache  # here: suffix_cache imports the drafters, which import this module

    if cache is not None and not isinstance(cache, SuffixCache):
        raise ValueError(
            f"suffix_cache must be a speculoos_hf.SuffixCache (or None for none), got {type(cache).__name__} "
            f"{cache!r:.60}: build one with SuffixCache() or SuffixCache.load(path)."
        )
