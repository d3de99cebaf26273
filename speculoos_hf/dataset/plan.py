"""What a run has to do: the input, the records already written for it (each checked to be this input's record,
by index, id and prompt), and the batches left, longest prompts first."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .distributed import broadcast, gather
from .inputs import InputRecord, read_records
from .store import ForeignOutputError, OutputStore


@dataclass
class Resume:
    """The input and what is written for it: `known`, the records this process can see (by index); `done`, the
    indices written as any process sees them; `main_known`, those the main process sees."""

    items: list[InputRecord]
    known: dict[int, dict]
    done: set[int]
    main_known: set[int]

    @classmethod
    def read(cls, data, store: OutputStore, job, state) -> Resume:
        """Reads the input and the files; ForeignOutputError on every process if any process finds a record that
        is not this input's (no model is needed: callers can check before loading one)."""
        items = read_records(data, job.prompt_field, job.id_field)
        known, problem = {}, None
        try:
            known = owned_records(store.read(), items, job.retry_errors)
        except ForeignOutputError as e:
            problem = str(e)
        problems = [p for p in gather(state, problem) if p]
        if problems:
            raise ForeignOutputError(problems[0])
        done = set().union(*gather(state, sorted(known)))
        main_known = set(broadcast(state, sorted(known)))
        return cls(items, known, done, main_known)

    def todo(self) -> list[InputRecord]:
        return [item for item in self.items if item.index not in self.done]


def owned_records(found: list[tuple], items: list[InputRecord], retry_errors: bool) -> dict[int, dict]:
    """Written records by index (error records left out under `retry_errors`); ForeignOutputError, naming the file,
    at the first record that is not this input's record at its index."""
    known: dict[int, dict] = {}
    for path, rec in found:
        problem = _mismatch(rec, items)
        if problem is not None:
            raise ForeignOutputError(f"{path} holds records of another input ({problem}); write to another output "
                                     "file, or delete this one to start over")
        if not (retry_errors and "error" in rec):
            known[rec["index"]] = rec
    return known


def _mismatch(rec: dict, items: list[InputRecord]) -> str | None:
    i = rec["index"]
    if i >= len(items):
        return f"a record with index {i}, but the input has {len(items)} records"
    for name, value in (("id", items[i].id), ("prompt", items[i].prompt)):
        if name not in rec or rec[name] != _as_written(value):
            return f"record {i} has {name} {_show(rec.get(name, '<none>'))} where the input has {_show(value)}"
    return None


def _as_written(value):
    """`value` as it reads back from a record."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _show(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


@dataclass
class Plan:
    """The work left: records whose input cannot be generated, and the batches, ordered so that accelerate's
    contiguous split deals them round robin (every process gets long and short prompts)."""

    input_errors: list[InputRecord]
    batches: list[list[InputRecord]]

    @classmethod
    def make(cls, resume: Resume, tokenizer, context: int | None, job, num_processes: int) -> Plan:
        todo = resume.todo()
        for item in todo:
            item.tokenize(tokenizer, job.chat_template, job.max_new_tokens, context)
        batches = batches_by_length([it for it in todo if it.error is None], job.batch_size)
        return cls([it for it in todo if it.error is not None], round_robin(batches, num_processes))


def batches_by_length(items: list[InputRecord], batch_size: int) -> list[list[InputRecord]]:
    """Batches of prompts of similar length, longest first (an out-of-memory shows up at once)."""
    ordered = sorted(items, key=lambda it: (-len(it.input_ids), it.index))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def round_robin(batches: list, n: int) -> list:
    """Order batches so that accelerate's contiguous split gives process r the batches r, r + n, r + 2n, ..."""
    return [b for r in range(n) for b in batches[r::n]]
