"""The files of a run: `<output>` (the merged records, replaced atomically) and `<output>.parts/part-<rank>.jsonl`
(each process's finished records, appended durably), and what they already hold."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


class ForeignOutputError(ValueError):
    """The output (or a parts file) holds something other than this input's records: resuming would mix them."""


class OtherOptionsError(ForeignOutputError):
    """The output holds this input's records made with other options (those that shape a record)."""


class OutputPathError(ValueError):
    """The output cannot be written where it is asked for (a directory, a path under a file, no permission)."""


def dumps(record: dict) -> str:
    """One line of standard JSON: text that is not valid Unicode (a lone surrogate) is written as \\u escapes, still
    valid JSON that reads back to the same string; a non-finite number (NaN, Infinity: not JSON) as null."""
    try:
        line = json.dumps(record, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        record = _finite(record)
        line = json.dumps(record, ensure_ascii=False, default=str, allow_nan=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record, ensure_ascii=True, default=str, allow_nan=False)
    return line


def as_written(value):
    """`value` as it reads back from a record."""
    return json.loads(dumps(value))


def _finite(value):
    """`value` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def unwritable(path: Path) -> str | None:
    """Why a file cannot be created at `path` (its folders made as needed), or None."""
    path = Path(path)
    folder = next(p for p in [path.parent, *path.parent.parents] if p.exists() or p == Path(p.anchor))
    if not folder.is_dir():
        return f"cannot write {path}: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write {path}: no permission to write in {folder}"
    return None


def is_record(obj) -> bool:
    """A record of this tool: an object with a 0-based integer `index`."""
    index = obj.get("index") if isinstance(obj, dict) else None
    return isinstance(index, int) and not isinstance(index, bool) and index >= 0


class PartWriter:
    """Appends records to one process's parts file, durably (flush and fsync per call)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a+b")
        self.f.seek(0, os.SEEK_END)
        if self.f.tell() > 0:  # a crash may have cut the last line: start on a fresh one
            self.f.seek(-1, os.SEEK_END)
            if self.f.read(1) != b"\n":
                self.f.write(b"\n")

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self.f.write("".join(dumps(r) + "\n" for r in records).encode("utf-8"))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


class OutputStore:
    """The output file of a run and its parts folder."""

    def __init__(self, output):
        self.output = Path(output)
        self.parts = self.output.with_name(self.output.name + ".parts")

    def check_writable(self) -> None:
        """OutputPathError unless the output (and its parts folder) can be written where they are asked for."""
        out = self.output
        if out.is_dir():
            raise OutputPathError(f"{out} is a directory: give the path of a file")
        if out.exists() and not out.is_file():
            raise OutputPathError(f"{out} is not a regular file (it is replaced atomically at the end)")
        if self.parts.exists() and not self.parts.is_dir():
            raise OutputPathError(f"{self.parts} (the parts folder) is not a directory")
        problem = unwritable(out)
        if problem is not None:
            raise OutputPathError(problem)

    def read(self) -> list[tuple[Path, dict]]:
        """(file, record) for every record written so far, the output's first, then each parts file's (a later
        record of an index replaces an earlier one). A line of the output that is not a record means the file is
        not ours: ForeignOutputError. A parts file may end in a line cut by a crash: skipped."""
        found = [(self.output, rec) for rec in _records(self.output, strict=True)]
        if self.parts.is_dir():
            for part in sorted(self.parts.glob("*.jsonl")):
                found += [(part, rec) for rec in _records(part, strict=False)]
        return found

    def writer(self, rank: int) -> PartWriter:
        return PartWriter(self._part(rank))

    def replace_output(self, records: list[dict]) -> None:
        """Write `records` as the output, atomically (a crash leaves the old file or the new one)."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_name(f".{self.output.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(dumps(rec) + "\n" for rec in records))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.output)

    def remove_parts(self) -> None:
        for part in self.parts.glob("part-*.jsonl"):
            part.unlink(missing_ok=True)
        try:
            self.parts.rmdir()
        except OSError:
            pass

    def remove_part(self, rank: int) -> None:
        self._part(rank).unlink(missing_ok=True)

    def _part(self, rank: int) -> Path:
        return self.parts / f"part-{rank:05d}.jsonl"


def _records(path: Path, strict: bool) -> list[dict]:
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    records = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec = None
        if is_record(rec):
            records.append(rec)
        elif strict:
            raise ForeignOutputError(
                f"{path} is not an output of speculoos-generate (line {line_no} is not one of its records); write "
                "to another output file, or delete this one to start over"
            )
    return records
