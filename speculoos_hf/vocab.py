"""Draft/target vocabulary compatibility.

Token ids must mean the same thing to both models. Equal `vocab_size` is taken as compatible. Different sizes are
fine when the models share one tokenizer whose ids fit in both embeddings (padded embedding matrices, as Qwen2.5
0.5B with 151936 rows and 7B with 152064): the draft then has probability 0 on ids it lacks and a draft id the
target lacks is always rejected, so the output stays exact. Anything else is refused.
"""

from __future__ import annotations

_TOKENIZER_VERDICTS: dict[tuple[str, str], bool] = {}


def vocab_size(model) -> int:
    return model.config.get_text_config().vocab_size


def _same_tokenizers(target_name: str, draft_name: str, limit: int) -> bool:
    """Load both models' tokenizers (from name_or_path) and compare vocabularies; memoised per pair."""
    key = (target_name, draft_name)
    if key not in _TOKENIZER_VERDICTS:
        try:
            from transformers import AutoTokenizer

            tok_t = AutoTokenizer.from_pretrained(target_name)
            tok_d = AutoTokenizer.from_pretrained(draft_name)
            verdict = tok_t.get_vocab() == tok_d.get_vocab() and len(tok_t) <= limit
        except Exception:  # no tokenizer to be found: cannot prove compatibility
            verdict = False
        _TOKENIZER_VERDICTS[key] = verdict
    return _TOKENIZER_VERDICTS[key]


def check_vocab_compatible(target, draft, tokenizer=None) -> None:
    """Raise ValueError unless target and draft token ids can be compared one to one."""
    vt, vd = vocab_size(target), vocab_size(draft)
    if vt == vd:
        return
    limit = min(vt, vd)
    if tokenizer is not None and len(tokenizer) <= limit:
        return
    target_name = getattr(target, "name_or_path", "") or ""
    draft_name = getattr(draft, "name_or_path", "") or ""
    if tokenizer is None and target_name and draft_name and _same_tokenizers(target_name, draft_name, limit):
        return
    raise ValueError(
        f"Draft vocab_size {vd} differs from target vocab_size {vt}. Speculative decoding needs token ids that mean "
        "the same to both models: use a draft from the target's family with the same tokenizer, and pass that "
        f"tokenizer to generate(tokenizer=...) so its {limit}-id range can be checked (or load both models from "
        "paths that include their tokenizers)."
    )
