"""Which drafter a generate() call gets, decided here only: a draft model (one tokenizer or two), prompt lookup,
both (hybrid), or the user's own drafter object."""

from __future__ import annotations

from transformers import PreTrainedModel

from ..glue.checks import checked_cache
from ..glue.options import SpeculativeOptions
from ..glue.vocab import tokenizer_relation, vocab_size
from .base import Drafter, is_drafter, with_counters
from .hybrid_tree import TreeHybridDrafter
from .lookup_tree import TreeLookupDrafter
from .model_tree import TreeModelDrafter
from .other_tokenizer import OtherTokenizerDrafter
from .prompt_lookup import PromptLookupDrafter


def make_drafter(target, draft, options: SpeculativeOptions) -> tuple[Drafter, int]:
    """(drafter, V) for `draft` (a causal LM, a drafter object, or None for prompt lookup alone) and `options`:
    V is the id range both distributions live on (the larger vocabulary of a model pair)."""
    V = vocab_size(target)
    lookup = _lookup_drafter(options, hybrid=isinstance(draft, PreTrainedModel))
    if draft is None:
        if lookup is None:
            raise ValueError("Nothing to draft with: pass draft_model= or prompt_lookup_num_tokens=N.")
        return with_counters(lookup), V
    if isinstance(draft, PreTrainedModel):
        model, V = model_drafter(target, draft, tokenizer=options.tokenizer,
                                 assistant_tokenizer=options.assistant_tokenizer, cache=checked_cache(draft),
                                 confidence_threshold=options.draft_confidence_threshold)
        return (model if lookup is None else TreeHybridDrafter(lookup, model, options.model_draft_tokens)), V
    if is_drafter(draft):
        if lookup is not None:
            raise ValueError("prompt_lookup_num_tokens combines with a draft model, not with a drafter object.")
        return with_counters(draft), V
    raise ValueError(
        f"draft_model must be a transformers causal LM or a drafter (start/propose/commit/select_rows), "
        f"got {type(draft).__name__}."
    )


def drafts_in_target_ids(drafter: Drafter) -> bool:
    """Whether the draft model behind `drafter` reads and writes the target's ids (one tokenizer): then a call's
    tokens are the draft's own ids too (what draft_quantization="auto" counts for its reduced head)."""
    model = drafter.model if isinstance(drafter, TreeHybridDrafter) else drafter
    return not isinstance(model, OtherTokenizerDrafter)


def model_drafter(target, draft_model, *, tokenizer=None, assistant_tokenizer=None, cache=None,
                  confidence_threshold: float | None = None):
    """The drafter for a draft model and the id range V both distributions live on: `(drafter, V)`.

    One tokenizer: `TreeModelDrafter`, V = the larger vocab_size. Two: `OtherTokenizerDrafter`, V = the target's
    (which of the two applies: `speculoos_hf.glue.vocab.tokenizer_relation`)."""
    relation, toks = tokenizer_relation(target, draft_model, tokenizer, assistant_tokenizer)
    vt = vocab_size(target)
    if relation == "same":
        return TreeModelDrafter(draft_model, cache, confidence_threshold), max(vt, vocab_size(draft_model))
    tok_t, tok_d = toks
    drafter = OtherTokenizerDrafter(draft_model, tok_t, tok_d, vt, cache=cache,
                                    confidence_threshold=confidence_threshold)
    return drafter, vt


def _lookup_drafter(options: SpeculativeOptions, hybrid: bool) -> PromptLookupDrafter | None:
    """Prompt lookup when asked for. Beside a draft model, 1-token matches are left to the model (unless only 1-token
    matches are searched): a single recurring token predicts little."""
    if options.prompt_lookup_num_tokens is None:
        return None
    ngram = options.max_matching_ngram_size
    return TreeLookupDrafter(options.prompt_lookup_num_tokens, ngram, 2 if hybrid and ngram != 1 else 1,
                               cache=options.suffix_cache)
