"""Draft/target vocabularies: one tokenizer, or two.

Token ids must mean the same to both models for a draft to propose in its own ids (`ModelDrafter`). That holds
when both use one tokenizer, including padded embedding matrices of different sizes (Qwen2.5 0.5B with 151936
rows and 7B with 152064) as long as the tokenizer's ids fit in both: the draft then has probability 0 on ids it
lacks and a draft id the target lacks is always rejected, so the output stays exact.

A draft with another tokenizer proposes through `OtherTokenizerDrafter` (vocabulary intersection when sampling,
re-encoded text when greedy; see `speculoos_hf.drafters.other_tokenizer`). Which of the two applies:

1. Both tokenizers at hand (`tokenizer=` and `assistant_tokenizer=`, or either loaded from its model's
   `name_or_path` from local files): the same tokens by the same ids, fitting both embeddings -> one tokenizer;
   otherwise -> the other-tokenizer path.
2. Not both at hand: equal `vocab_size` is taken as one tokenizer; different sizes as one tokenizer only when
   `tokenizer=` fits both embeddings. Anything else is refused with a ValueError that says to pass
   `assistant_tokenizer=`.
"""

from __future__ import annotations

from transformers import AutoTokenizer

_LOADED: dict[str, object] = {}
_SAME: dict[tuple[int, int], bool] = {}


def vocab_size(model) -> int:
    return model.config.get_text_config().vocab_size


def load_tokenizer(name_or_path: str):
    """The tokenizer stored with a model (local files or the hub cache only, never the network), or None."""
    if not name_or_path:
        return None
    if name_or_path not in _LOADED:
        try:
            _LOADED[name_or_path] = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        except Exception:  # no tokenizer there: cannot be checked
            _LOADED[name_or_path] = None
    return _LOADED[name_or_path]


def same_tokenizer(a, b) -> bool:
    """Do the two tokenizers mean the same token by every id they share? (A family's tokenizers may differ
    only in extra added tokens at the end, which, like padded embedding rows, costs acceptance, never exactness.)"""
    if a is b:
        return True
    key = (id(a), id(b))
    if key not in _SAME:
        ia = {i: t for t, i in a.get_vocab().items()}
        ib = {i: t for t, i in b.get_vocab().items()}
        common = min(len(a), len(b))
        _SAME[key] = common > 0 and all(ia.get(i) == ib.get(i) for i in range(common))
    return _SAME[key]


def tokenizers_of(target, draft, tokenizer=None, assistant_tokenizer=None):
    """(target tokenizer, draft tokenizer), each passed or loaded from its model's name_or_path; None if neither."""
    tok_t = tokenizer if tokenizer is not None else load_tokenizer(getattr(target, "name_or_path", "") or "")
    tok_d = assistant_tokenizer
    if tok_d is None:
        tok_d = load_tokenizer(getattr(draft, "name_or_path", "") or "")
    return tok_t, tok_d


def tokenizer_relation(target, draft, tokenizer=None, assistant_tokenizer=None):
    """("same", tokenizer) or ("other", (target tokenizer, draft tokenizer)); ValueError when neither holds."""
    vt, vd = vocab_size(target), vocab_size(draft)
    limit = min(vt, vd)
    tok_t, tok_d = tokenizers_of(target, draft, tokenizer, assistant_tokenizer)
    if assistant_tokenizer is not None and tok_t is None:
        raise ValueError(
            "assistant_tokenizer= was given, but the target's tokenizer is not: pass tokenizer=<the target's "
            "tokenizer> too (as with transformers' assisted generation)."
        )
    if tok_t is not None and tok_d is not None:
        if same_tokenizer(tok_t, tok_d) and (vt == vd or len(tok_t) <= limit):
            return "same", tok_t
        return "other", (tok_t, tok_d)  # (also one tokenizer whose ids do not fit both embeddings: by text)
    if vt == vd:
        return "same", tokenizer
    if tokenizer is not None and len(tokenizer) <= limit:
        return "same", tokenizer
    raise ValueError(
        f"Draft vocab_size {vd} differs from target vocab_size {vt}. If the draft has its own tokenizer, pass both "
        "tokenizers: generate(..., tokenizer=<target's tokenizer>, assistant_tokenizer=<draft's tokenizer>), and "
        "the draft proposes across vocabularies (exactly). If it shares the target's tokenizer, pass that tokenizer "
        f"as tokenizer=... so its id range can be checked against both embeddings ({limit} ids)."
    )


def check_vocab_compatible(target, draft, tokenizer=None, assistant_tokenizer=None) -> None:
    """Raise ValueError unless the draft's token ids mean the same as the target's (one tokenizer). A draft with
    another tokenizer is served by `speculoos_hf.drafters.select.model_drafter`, which picks the drafter for either
    case."""
    relation, _ = tokenizer_relation(target, draft, tokenizer, assistant_tokenizer)
    if relation != "same":
        raise ValueError(
            "The draft model has another tokenizer than the target: its token ids mean other tokens. Build its "
            "drafter with speculoos_hf.drafters.select.model_drafter (generate() does so when given tokenizer= and "
            "assistant_tokenizer=)."
        )
