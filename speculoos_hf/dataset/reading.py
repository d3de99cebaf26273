"""Reading a dataset run's input into records: a JSONL file, a `datasets.Dataset`, a pandas DataFrame, a dict of
columns, or an iterable of mappings or strings.

A line or row that cannot be generated keeps the reason in its record's `error` (it never stops the run). A missing
id (absent, null, or a non-finite number such as a float column's NaN, which is not standard JSON) is the index. A
field name that no record of the input holds is refused (an `OptionError`): the records would all be errors."""

from __future__ import annotations

import codecs
import json
import math
import numbers
import os
from collections.abc import Mapping

from .inputs import InputRecord
from .option_checks import OptionError


def read_records(data, prompt_field: str = "prompt", id_field: str = "id") -> list[InputRecord]:
    """Input records, in input order. `data`: a JSONL path, a `datasets.Dataset`, a pandas DataFrame, a dict of
    equal-length columns, or an iterable of mappings or strings; blank lines of a file are not records. A
    `datasets.DatasetDict` (splits) or any other mapping is refused with a ValueError saying what to pass."""
    reader = _Reader(prompt_field, id_field)
    if isinstance(data, (str, os.PathLike)):
        records = _read_jsonl(data, reader)
    else:
        records = [reader.record(obj, i, where=f"record {i}") for i, obj in enumerate(_rows(data))]
    reader.check_fields()
    return records


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


def _read_jsonl(path, reader: _Reader) -> list[InputRecord]:
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
            records.append(reader.record(obj, index, where))
    return records


class _Reader:
    """Turns the input's objects into records, noting which of the named fields the input holds."""

    def __init__(self, prompt_field: str, id_field: str):
        self.prompt_field, self.id_field = prompt_field, id_field
        self.objects = self.prompts = self.ids = 0
        self.first_fields: list | None = None

    def record(self, obj, index: int, where: str) -> InputRecord:
        prompt_field = self.prompt_field
        if isinstance(obj, str):
            obj = {prompt_field: obj}
        if not isinstance(obj, dict):
            try:
                obj = dict(obj)
            except (TypeError, ValueError):
                return InputRecord(index, index, error=f"{where}: expected a JSON object with a {prompt_field!r} "
                                                       f"field, got {type(obj).__name__}")
        self._note(obj)
        rid = obj.get(self.id_field)
        rid = index if rid is None or _non_finite(rid) else rid
        if prompt_field not in obj:
            return InputRecord(index, rid, error=f"{where}: no {prompt_field!r} field (fields: {sorted(obj)})")
        prompt = obj[prompt_field]
        if isinstance(prompt, tuple):
            prompt = list(prompt)
        problem = _prompt_problem(prompt, prompt_field)
        return InputRecord(index, rid, prompt=prompt, error=None if problem is None else f"{where}: {problem}")

    def _note(self, obj: dict) -> None:
        self.objects += 1
        self.prompts += self.prompt_field in obj
        self.ids += self.id_field in obj
        if self.first_fields is None:
            self.first_fields = sorted(map(str, obj))

    def check_fields(self) -> None:
        """OptionError where no record holds the prompt field, or a chosen id field (a misspelt name, surely)."""
        if not self.objects:
            return
        if not self.prompts:
            raise OptionError("prompt_field", f"{self.prompt_field!r}: no record of the input has this field (the "
                                              f"first has {self.first_fields})")
        if not self.ids and self.id_field != "id":
            raise OptionError("id_field", f"{self.id_field!r}: no record of the input has this field (the first "
                                          f"has {self.first_fields})")


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


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "..."
