"""The input of a dataset run: records read from a JSONL file, a `datasets.Dataset` or an iterable, then tokenised.

A record that cannot be generated (bad JSON, text that is not UTF-8 or holds a lone surrogate, no prompt, a prompt
too long for the context) keeps the reason in `error` and becomes an error record; it never stops the run. A missing
id (absent, null, or a non-finite number such as a float column's NaN, which is not standard JSON) is the index."""

from __future__ import annotations

import codecs
import json
import math
import numbers
import os
from collections.abc import Mapping
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


def read_records(data, prompt_field: str = "prompt", id_field: str = "id") -> list[InputRecord]:
    """Input records, in input order. `data`: a JSONL path, a `datasets.Dataset`, a pandas DataFrame, a dict of
    equal-length columns, or an iterable of mappings or strings; blank lines of a file are not records. A
    `datasets.DatasetDict` (splits) or any other mapping is refused with a ValueError saying what to pass."""
    if isinstance(data, (str, os.PathLike)):
        return _read_jsonl(data, prompt_field, id_field)
    return [_record_from(obj, i, prompt_field, id_field, where=f"record {i}") for i, obj in enumerate(_rows(data))]


def _rows(data):
    """The rows of an in-memory input (tables and columns turned into rows of mappings)."""
    kind = type(data).__name__
    if kind in ("DatasetDict", "IterableDatasetDict"):
        splits = list(data)
        raise ValueError(f"data is a datasets.{kind} with splits {splits}: pass one split, e.g. "
                         f"data[{splits[0] if splits else 'train'!r}] (or load_dataset(..., split=...))")
    if kind == "DataFrame" and hasattr(data, "to_dict"):
        return data.to_dict("records")
    if isinstance(data, Mapping):
        columns = {k: v for k, v in data.items() if not isinstance(v, (str, bytes)) and hasattr(v, "__len__")}
        lengths = {len(v) for v in columns.values()}
        if not data or len(columns) < len(data) or len(lengths) != 1:
            raise ValueError("data is a mapping but not a dict of equal-length columns: pass a list of records "
                             "(mappings or strings), a dict of columns, a DataFrame, a datasets.Dataset or a JSONL "
                             "path")
        n = lengths.pop()
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]
    return data


def _read_jsonl(path, prompt_field: str, id_field: str) -> list[InputRecord]:
    records: list[InputRecord] = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):  # Windows editors start UTF-8 files with one
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            index, where = len(records), f"line {line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                records.append(InputRecord(index, index, error=f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} "
                                                               f"at byte {e.start})"))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                records.append(InputRecord(index, index, error=f"{where}: invalid JSON ({e.msg} at column {e.colno}): "
                                                               f"{_clip(line.strip())}"))
                continue
            records.append(_record_from(obj, index, prompt_field, id_field, where))
    return records


def _record_from(obj, index: int, prompt_field: str, id_field: str, where: str) -> InputRecord:
    if isinstance(obj, str):
        obj = {prompt_field: obj}
    if not isinstance(obj, dict):
        try:
            obj = dict(obj)
        except (TypeError, ValueError):
            return InputRecord(index, index, error=f"{where}: expected a JSON object with a {prompt_field!r} field, "
                                                   f"got {type(obj).__name__}")
    rid = obj.get(id_field)
    rid = index if rid is None or _non_finite(rid) else rid
    if prompt_field not in obj:
        return InputRecord(index, rid, error=f"{where}: no {prompt_field!r} field (fields: {sorted(obj)})")
    prompt = obj[prompt_field]
    if isinstance(prompt, tuple):
        prompt = list(prompt)
    problem = _prompt_problem(prompt, prompt_field)
    return InputRecord(index, rid, prompt=prompt, error=None if problem is None else f"{where}: {problem}")


def _non_finite(value) -> bool:
    """NaN or an infinity (a float column's missing value; not standard JSON)."""
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value)


def _prompt_problem(prompt, prompt_field: str) -> str | None:
    """Why this prompt cannot be generated, or None."""
    if _non_finite(prompt):
        return f"no prompt ({prompt_field!r} is {prompt!r})"
    if not isinstance(prompt, str) and not _is_messages(prompt):
        return (f"{prompt_field!r} must be a string or a list of chat messages ({{'role', 'content'}}), got "
                f"{type(prompt).__name__}")
    if prompt == "":
        return "empty prompt"
    try:
        json.dumps(prompt, ensure_ascii=False, default=str, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return f"the prompt is not valid Unicode text (it holds the lone surrogate U+{ord(e.object[e.start]):04X})"
    except ValueError:
        return "the prompt holds a non-finite number (NaN or Infinity), which is not standard JSON"
    return None


def _is_messages(prompt) -> bool:
    return (isinstance(prompt, list) and len(prompt) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt))


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


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "..."
