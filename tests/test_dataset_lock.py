"""Issue 26, case 4: one writer per output. A run holds `<output>.lock` from before it reads the output until it
ends; a second run on the same output is refused at once; a lock file left by a dead run blocks nothing. The
`accelerate launch` processes of one run share its lock (tests/test_generate_dataset.py runs two)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from speculoos_hf.dataset import DatasetJob, DatasetRun, generate_dataset
from speculoos_hf.dataset.lock import OutputBusyError
from speculoos_hf.glue.toy import toy_pair

MAX_NEW = 6
ROWS = [{"id": f"r{i}", "prompt": " ".join(f"w{(3 * i + j) % 59:02d}" for j in range(1 + i % 4))} for i in range(12)]


@pytest.fixture(scope="module")
def pair():
    return toy_pair()


def test_a_second_run_on_the_same_output_is_refused_until_the_first_ends(pair, tmp_path):
    target, draft, tok = pair
    out, lock = tmp_path / "out.jsonl", tmp_path / "out.jsonl.lock"
    job = DatasetJob(max_new_tokens=MAX_NEW, num_draft_tokens=3, progress=False)
    first = DatasetRun(ROWS, out, job)  # open: the lock is held while the models would load
    assert lock.read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(OutputBusyError, match=rf"{out} is being written by another run \(pid {os.getpid()} on "):
        DatasetRun(ROWS, out, job)
    with pytest.raises(OutputBusyError):
        generate_dataset(target, draft, tok, ROWS, out, job)
    summary = first.generate(target, draft, tok)
    assert summary.generated == len(ROWS) and not lock.exists()
    with DatasetRun(ROWS, out, job) as again:  # the lock is free again; a `with` block lets go of it
        assert len(again.resume.done) == len(ROWS)
    assert not lock.exists()

    lock.write_text("pid 1 on a machine that crashed\n")  # left by a dead run: nobody holds it
    assert generate_dataset(target, draft, tok, ROWS, out, job).skipped == len(ROWS)
    assert not lock.exists()


def test_a_refused_run_leaves_nothing_behind(pair, tmp_path):
    """The lock is taken before the output is read: a run refused after that (another input's output) lets go,
    and the folders made for the lock file go with it."""
    target, draft, tok = pair
    out = tmp_path / "new" / "folder" / "out.jsonl"
    with pytest.raises(ValueError, match="no record of the input has this field"):
        generate_dataset(target, draft, tok, ROWS, out, prompt_field="question", progress=False)
    assert not list(tmp_path.iterdir())


def _write_when_read(fifo, text: str, reader: subprocess.Popen, timeout: float = 120) -> None:
    """Write `text` into `fifo` once `reader` opens it (fails if the reader exits or the time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO or reader.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the first run never read its input (exit {reader.poll()})") from e
            time.sleep(0.1)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_two_commands_on_one_output_exactly_one_writes_and_nothing_is_lost(pair, tmp_path):
    """Two real `speculoos-generate` processes started together on one output, each reading its input from a named
    pipe (a shell's `<(...)`) that stays empty until the test writes it. The first to take the lock waits on its
    input while holding it; the other is refused (exit 2, one line naming --output and the holder's pid) and writes
    nothing; then the holder gets its input and writes every record."""
    target, draft, tok = pair
    models = tmp_path / "models"
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(models / name)
        tok.save_pretrained(models / name)
    out, lock = tmp_path / "out.jsonl", tmp_path / "out.jsonl.lock"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "speculoos_hf.cli_generate", "--target", str(models / "target"), "--draft",
               str(models / "draft"), "--output", str(out), "--max-new-tokens", str(MAX_NEW), "--num-draft-tokens",
               "3", "--batch-size", "4", "--no-progress"]
    runs = {}
    for name in ("a", "b"):
        os.mkfifo(tmp_path / f"{name}.fifo")
        runs[name] = subprocess.Popen([*command, "--input", str(tmp_path / f"{name}.fifo")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while all(run.poll() is None for run in runs.values()):
            assert time.monotonic() < deadline, "neither run was refused"
            time.sleep(0.1)
        (refused_name, refused), = [(n, r) for n, r in runs.items() if r.poll() is not None]
        (holder_name, holder), = [(n, r) for n, r in runs.items() if r is not refused]
        _, refused_err = refused.communicate()
        assert refused.returncode == 2, refused_err[-2000:]
        assert refused_err == (f"speculoos-generate: error: argument --output: {out} is being written by another run "
                               f"(pid {holder.pid} on {os.uname().nodename}); wait for it to finish, or write to "
                               "another output\n")
        assert not out.exists() and lock.read_text().startswith(f"pid {holder.pid} ")
        _write_when_read(tmp_path / f"{holder_name}.fifo", "".join(json.dumps(r) + "\n" for r in ROWS), holder)
        _, err = holder.communicate(timeout=300)
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
    assert holder.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in ROWS] and all("completion" in r for r in records)
    assert not lock.exists() and not (tmp_path / "out.jsonl.parts").exists()
