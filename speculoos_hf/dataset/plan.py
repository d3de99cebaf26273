"""What a run has to do: the input, the records already written for it (each checked to be this input's record,
by index, id and prompt, made with this job's options), and the batches left, longest prompts first."""

from __future__ import annotations

from dataclasses import dataclass

from .distributed import broadcast, gather
from .inputs import InputRecord
from .reading import read_records
from .store import ForeignOutputError, OtherOptionsError, OutputStore, as_written


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
            known = owned_records(store.read(), items, job.retry_errors, job.record_options())
        except ForeignOutputError as e:
            problem = (isinstance(e, OtherOptionsError), str(e))
        problems = [p for p in gather(state, problem) if p]
        if problems:
            other_options, message = problems[0]
            raise (OtherOptionsError if other_options else ForeignOutputError)(message)
        done = set().union(*gather(state, sorted(known)))
        main_known = set(broadcast(state, sorted(known)))
        return cls(items, known, done, main_known)

    def todo(self) -> list[InputRecord]:
        return [item for item in self.items if item.index not in self.done]


def owned_records(found: list[tuple], items: list[InputRecord], retry_errors: bool,
                  options: dict) -> dict[int, dict]:
    """Written records by index; ForeignOutputError, naming the file, at the first record that is not this input's
    record at its index, OtherOptionsError at the first made with other `options`. Under `retry_errors` error
    records are left out, checked for their index only: they are redone (their input line may have been fixed)."""
    known: dict[int, dict] = {}
    options = as_written(options)
    for path, rec in found:
        retried = retry_errors and "error" in rec
        problem = _out_of_range(rec, items) if retried else _mismatch(rec, items)
        if problem is not None:
            raise ForeignOutputError(f"{path} holds records of another input ({problem}); write to another output "
                                     "file, or delete this one to start over")
        if retried:
            continue
        if rec.get("options") != options:
            raise OtherOptionsError(f"{path} holds records made with other options ({_option_changes(rec, options)}): "
                                    "rerun with the options it was made with, or write to another output file")
        known[rec["index"]] = rec
    return known


def _out_of_range(rec: dict, items: list[InputRecord]) -> str | None:
    i = rec["index"]
    return f"a record with index {i}, but the input has {len(items)} records" if i >= len(items) else None


def _mismatch(rec: dict, items: list[InputRecord]) -> str | None:
    problem = _out_of_range(rec, items)
    if problem is not None:
        return problem
    i = rec["index"]
    for name, value in (("id", items[i].id), ("prompt", items[i].prompt)):
        if name not in rec or rec[name] != as_written(value):
            hint = " (an error record: --retry-errors / retry_errors=True redoes it)" if "error" in rec else ""
            return f"record {i} has {name} {_show(rec.get(name, '<none>'))} where the input has {_show(value)}{hint}"
    return None


def _option_changes(rec: dict, options: dict) -> str:
    """The options that differ, as `name: X there, Y now`."""
    written = rec.get("options")
    if not isinstance(written, dict):
        return f"record {rec['index']} states none: written before speculoos-generate kept them"
    names = [k for k in dict.fromkeys([*written, *options]) if written.get(k) != options.get(k)]
    return ", ".join(f"{k}: {_show(written.get(k))} there, {_show(options.get(k))} now" for k in names)


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
