"""Which drafter a generate() call gets, from its arguments: a draft model, prompt lookup, both, or the user's own."""

from __future__ import annotations

from transformers import PreTrainedModel

from ..checks import check_models, checked_cache
from ..vocab import model_drafter, vocab_size
from .base import Drafter
from .hybrid import HybridDrafter
from .prompt_lookup import PromptLookupDrafter


def make_drafter(
    target,
    draft_model,
    *,
    num_draft_tokens: int,
    prompt_lookup_num_tokens: int | None,
    max_matching_ngram_size: int | None,
    confidence_threshold: float | None,
    tokenizer,
    max_length: int,
    assistant_tokenizer=None,
) -> tuple[Drafter, int]:
    """Returns (drafter, V): V is the id range both distributions live on (the larger vocabulary of a model pair)."""
    V = vocab_size(target)
    lookup = None
    if prompt_lookup_num_tokens is not None:
        lookup = PromptLookupDrafter(prompt_lookup_num_tokens, max_matching_ngram_size or 2)
    if draft_model is None:
        return lookup, V
    if isinstance(draft_model, PreTrainedModel):
        check_models(target, draft_model)
        cache = checked_cache(draft_model, None, max_length)
        # one tokenizer: ModelDrafter over the larger id range; another tokenizer: OtherTokenizerDrafter (vocab.py)
        model, V = model_drafter(target, draft_model, tokenizer=tokenizer, assistant_tokenizer=assistant_tokenizer,
                                 cache=cache, confidence_threshold=confidence_threshold)
        return (model if lookup is None else HybridDrafter(lookup, model, num_draft_tokens)), V
    if isinstance(draft_model, Drafter):
        if lookup is not None:
            raise ValueError("prompt_lookup_num_tokens combines with a draft model, not with a drafter object.")
        return draft_model, V
    raise ValueError(
        f"draft_model must be a transformers causal LM or a drafter (start/propose/commit/select_rows), "
        f"got {type(draft_model).__name__}."
    )
