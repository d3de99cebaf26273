"""What the command's `--input` and `--split` name: a JSONL file (or a named pipe), a dataset saved by
`save_to_disk` (one split of a DatasetDict), or a dataset name for `load_dataset`. A bad one is an OptionError
naming `input` or `split`."""

from __future__ import annotations

import os
from pathlib import Path

from .option_checks import OptionError

DATA_SUFFIXES = {".jsonl", ".json", ".ndjson", ".txt", ".csv", ".tsv", ".parquet", ".gz", ".zst"}


def input_problem(text: str) -> str | None:
    """Why `text` names no input, as far as can be told without loading anything: a path that does not exist is
    refused unless it reads as a dataset name (`name` or `owner/name`, without a data file's suffix; tried when
    loaded)."""
    path = Path(text).expanduser()
    if path.exists():
        return None
    looks_like_path = text.startswith(("/", ".", "~")) or (os.sep in text and path.parent.is_dir()) or \
        path.suffix.lower() in DATA_SUFFIXES or (path.suffix and "/" not in text)  # hub ids: name or owner/name
    return f"{text}: no such file or directory" if looks_like_path else None


def open_input(text: str, split: str | None):
    """A file's path (read by the run) or a `datasets.Dataset`."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        if split is not None:
            raise OptionError("split", "applies to a dataset, not a file")
        return str(path)
    if path.is_dir():
        return _saved(path, split)
    return _named(text, split or "train")


def _saved(path: Path, split: str | None):
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - whatever the folder holds, it is not a saved dataset
        raise OptionError("input", f"{path} is a directory but not a dataset saved by save_to_disk ({e})") from None
    if not isinstance(data, datasets.DatasetDict):
        if split is not None:
            raise OptionError("split", f"{path} holds one dataset, not splits")
        return data
    split = split or "train"
    if split not in data:
        raise OptionError("split", f"no split {split!r} in {path} (splits: {', '.join(data)})")
    return data[split]


def _named(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            raise OptionError("split", f"{split!r}: {e}") from None
        problem = e
    except Exception as e:  # noqa: BLE001 - a name that is neither a file nor a loadable dataset
        problem = e
    raise OptionError("input", f"{name}: no such file or directory, and load_dataset failed: "
                               f"{type(problem).__name__}: {problem}")
