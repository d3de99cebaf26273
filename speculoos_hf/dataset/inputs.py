"""An input record of a dataset run (read by `reading.py`), tokenised; the models' context.

A record that cannot be generated (bad JSON, text that is not UTF-8 or holds a lone surrogate, no prompt, a prompt
too long for the context) keeps the reason in `error` and becomes an error record; it never stops the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class InputRecord:
    """One input record: its 0-based position, id and prompt, or why it cannot be generated; ids once tokenised."""

    index: int
    id: Any
    prompt: Any = None
    error: str | None = None
    input_ids: list[int] = field(default_factory=list)

    def error_record(self, error: str | None = None) -> dict:
        """The output record that stands for this input when it cannot be generated."""
        return {"id": self.id, "index": self.index, "prompt": self.prompt, "error": error or self.error}

    def tokenize(self, tokenizer, chat_template: bool, max_new_tokens: int, context: int | None) -> None:
        """Sets `input_ids`, or `error` where the prompt cannot be tokenised or does not fit the context."""
        if self.error is not None:
            return
        try:
            ids = _token_ids(tokenizer, self.prompt, chat_template)
        except Exception as e:  # noqa: BLE001 - any tokenizer failure is this record's error, not the run's
            self.error = f"cannot tokenize the prompt: {type(e).__name__}: {e}"
            return
        if not ids:
            self.error = "the prompt has no tokens"
        elif context is not None and len(ids) + max_new_tokens > context:
            self.error = (f"the prompt has {len(ids)} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                          f"model's context of {context} tokens")
        else:
            self.input_ids = list(ids)


def _token_ids(tokenizer, prompt, chat_template: bool) -> list[int]:
    if not chat_template and isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template (chat messages need one)")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def context_length(*models) -> int | None:
    """The shortest context (positions) among the models that declare one, or None."""
    lengths = [n for n in (_context_of(m) for m in models if m is not None and hasattr(m, "config")) if n]
    return min(lengths) if lengths else None


def _context_of(model) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
