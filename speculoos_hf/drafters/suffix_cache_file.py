"""The `SuffixCache` file: a plain .npz of int arrays written by `write` and read back by `read`, which refuses
anything else with a ValueError before it allocates for it: no pickled objects (`allow_pickle=False`), each array's
header checked against the archive's own sizes, every length and count checked with no room to overflow.
"""

from __future__ import annotations

import zipfile
import zlib

import numpy as np

FORMAT = "speculoos-suffix-cache-1"
FIELDS = ("format", "max_tokens", "tokens", "lengths")
MAX_TOKENS = 1 << 30  # the most tokens a cache holds (and a file may carry)
MAX_RATIO = 1100  # deflate expands data at most ~1032 times: a member claiming more than this of its packed size lies
_READ_ERRORS = (ValueError, KeyError, TypeError, OverflowError, OSError, EOFError, MemoryError, zipfile.BadZipFile,
                zlib.error)
_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def write(path, sequences: list[np.ndarray], max_tokens: int) -> None:
    """`sequences` (oldest first) and the cache's bound as an .npz of int arrays (no pickled objects)."""
    tokens = np.concatenate(sequences) if sequences else np.empty(0, dtype=np.int64)
    with open(path, "wb") as f:
        np.savez(f, format=np.array(FORMAT), max_tokens=np.array(max_tokens, dtype=np.int64),
                 tokens=tokens.astype(np.int64), lengths=np.array([len(s) for s in sequences], dtype=np.int64))


def read(path) -> tuple[list[np.ndarray], int]:
    """(the sequences, oldest first, the saved max_tokens) of a file `write` wrote; ValueError for anything else."""
    try:
        fields = _arrays(path)
    except _READ_ERRORS as err:
        raise ValueError(f"{path} is not a speculoos suffix cache file (.npz of int arrays): {err}") from None
    problem = _problem(fields)
    if problem is not None:
        raise ValueError(f"{path} is not a valid speculoos suffix cache file (format {FORMAT}): {problem}.")
    tokens, lengths = fields["tokens"].astype(np.int64), fields["lengths"].astype(np.int64)
    return (np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []), int(fields["max_tokens"])


def _arrays(path) -> dict:
    """The file's four arrays, each read only after its header was found consistent with the archive."""
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("a single array, not an .npz archive")
    with data:
        for name in FIELDS:
            _check_header(data.zip, name)
        return {name: data[name] for name in FIELDS}


def _check_header(archive: zipfile.ZipFile, name: str) -> None:
    """Refuse a member whose header claims more data than the member holds (or than its packed size can expand
    to): reading it would allocate for the claim first."""
    info = archive.getinfo(f"{name}.npy")
    if info.file_size > MAX_RATIO * info.compress_size + 4096:
        raise ValueError(f"{name}: {info.file_size} bytes claimed from {info.compress_size} packed")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in _HEADERS:
            raise ValueError(f"{name}: .npy format version {version}")
        shape, _, dtype = _HEADERS[version](member)
    count = 1
    for size in shape:
        count *= int(size)
    if count * dtype.itemsize > info.file_size:
        raise ValueError(f"{name}: a header claiming {shape} of {dtype} in {info.file_size} bytes")


def _problem(fields: dict) -> str | None:
    """What is wrong with the arrays (None: nothing). Lengths are checked one by one before they are summed, so that
    a sum cannot overflow into a plausible total."""
    fmt, bound, tokens, lengths = (fields[name] for name in FIELDS)
    if fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        return "no format tag"
    if bound.shape != () or bound.dtype.kind not in "iu" or not 1 <= int(bound) <= MAX_TOKENS:
        return f"max_tokens must be one integer in [1, {MAX_TOKENS}]"
    if tokens.ndim != 1 or lengths.ndim != 1 or tokens.dtype.kind not in "iu" or lengths.dtype.kind not in "iu":
        return "tokens and lengths must be 1-d integer arrays"
    if len(tokens) > MAX_TOKENS or len(lengths) > len(tokens):
        return "more sequences or tokens than a cache holds"
    if len(lengths) and (lengths.min() < 1 or lengths.max() > len(tokens) or int(lengths.sum()) != len(tokens)):
        return "lengths do not add up to the tokens"
    if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(np.int64).max):
        return "token ids must be in [0, 2**63)"
    return None
