"""Generation over a dataset: `generate_dataset` and the `speculoos-generate` command, one and two processes.

Models are the toy pair of speculoos_hf.toy (tiny float32 Llamas over a word-level vocabulary, peaked logits):
greedy completions must equal the target's own plain greedy output for each prompt alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import speculoos_hf.dataset_generation as dg
from speculoos_hf.dataset_generation import generate_dataset, read_records
from speculoos_hf.toy import toy_pair

MAX_NEW = 10
TIMING_KEYS = {"seconds"}
# With num_draft_tokens left to generate()'s default ("auto": a cost model times the models), how many drafts a
# round proposes depends on timing; the text never does. Tests that leave K unset compare content only.
COUNTER_KEYS = {"draft_tokens_proposed", "draft_tokens_accepted", "acceptance_rate", "target_passes"}


@pytest.fixture(scope="module")
def pair():
    target, draft, tokenizer = toy_pair()
    return target, draft, tokenizer


def _prompts(n: int = 11) -> list[dict]:
    """Prompts of lengths 1..6 in mixed order, ids as strings."""
    return [{"id": f"p{i}", "prompt": " ".join(f"w{(5 * i + j) % 59:02d}" for j in range(1 + (i * 4) % 6))}
            for i in range(n)]


def _write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def _read(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _strip_timing(records, counters: bool = True):
    drop = TIMING_KEYS if counters else TIMING_KEYS | COUNTER_KEYS
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def _plain_greedy(target, tokenizer, prompt: str, max_new: int = MAX_NEW) -> str:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = target.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_greedy_records_in_input_order_equal_plain_generate(pair, tmp_path):
    target, draft, tok = pair
    rows = _prompts()
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    summary = generate_dataset(target, draft, tok, inp, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW, batch_size=3,
                               num_draft_tokens=4, progress=False)
    records = _read(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    assert [r["index"] for r in records] == list(range(len(rows)))
    assert not (tmp_path / "out.jsonl.parts").exists()  # merged, parts removed
    for row, rec in zip(rows, records):
        assert rec["prompt"] == row["prompt"]
        assert rec["completion"] == _plain_greedy(target, tok, row["prompt"])
        assert rec["finish_reason"] in ("stop", "length")
        assert 1 <= rec["new_tokens"] <= MAX_NEW and rec["seconds"] > 0 and rec["target_passes"] >= 1
        assert rec["draft_tokens_accepted"] <= rec["draft_tokens_proposed"]
    assert summary.records == summary.generated == len(rows) and summary.errors == 0
    assert summary.new_tokens == sum(r["new_tokens"] for r in records)
    assert 0 < summary.acceptance_rate <= 1
    # the target alone (no draft) gives the same texts
    generate_dataset(target, None, tok, inp, tmp_path / "plain.jsonl", max_new_tokens=MAX_NEW, batch_size=4,
                     progress=False)
    plain = _read(tmp_path / "plain.jsonl")
    assert [r["completion"] for r in plain] == [r["completion"] for r in records]
    assert [r["new_tokens"] for r in plain] == [r["new_tokens"] for r in records]


def test_batches_sorted_by_length(pair):
    items = read_records(_prompts())
    tok = pair[2]
    dg._tokenize(items, tok, False, MAX_NEW, 512)
    batches = dg._plan(items, 4)
    lengths = [len(it.input_ids) for b in batches for it in b]
    assert lengths == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [4, 4, 3]
    # accelerate's contiguous split of the round-robin order gives process r the batches r, r+n, ...
    assert dg._round_robin(list(range(7)), 3) == [0, 3, 6, 1, 4, 2, 5]


def test_bad_input_gets_error_records(pair, tmp_path):
    target, draft, tok = pair
    good = _prompts(3)
    lines = [
        json.dumps(good[0]),
        '{"id": "broken", "prompt": "w01 w02"',  # malformed JSON
        json.dumps({"id": "no-prompt", "text": "w01"}),
        json.dumps({"id": "not-text", "prompt": 42}),
        json.dumps({"id": "empty", "prompt": ""}),
        json.dumps({"id": "too-long", "prompt": " ".join(["w03"] * 600)}),  # toy context: 512 positions
        "",  # blank lines are not records
        json.dumps(good[1]),
        "[1, 2]",
        json.dumps(good[2]),
    ]
    inp = _write_jsonl(tmp_path / "in.jsonl", lines)
    summary = generate_dataset(target, draft, tok, inp, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW, batch_size=2,
                               progress=False)
    records = _read(tmp_path / "out.jsonl")
    assert len(records) == 9 and summary.errors == 6
    by_id = {r["id"]: r for r in records}
    assert by_id[1]["error"].startswith("line 2: invalid JSON")  # no id could be read: the index stands for it
    assert "no 'prompt' field" in by_id["no-prompt"]["error"]
    assert "must be a string" in by_id["not-text"]["error"]
    assert "empty prompt" in by_id["empty"]["error"]
    assert "600 tokens" in by_id["too-long"]["error"] and "context of 512" in by_id["too-long"]["error"]
    assert "expected a JSON object" in records[7]["error"]
    for row in good:
        assert by_id[row["id"]]["completion"] == _plain_greedy(target, tok, row["prompt"])
        assert "error" not in by_id[row["id"]]


def test_failed_generation_is_isolated_to_its_record(pair, tmp_path, monkeypatch):
    """A batch that fails is retried row by row: only the row that really fails gets an error record."""
    target, draft, tok = pair
    rows = _prompts(6)
    real = dg._run_batch

    def flaky(target_, draft_, tok_, batch, *args):
        if any(item.id == "p2" for item in batch):
            raise RuntimeError("simulated device failure")
        return real(target_, draft_, tok_, batch, *args)

    monkeypatch.setattr(dg, "_run_batch", flaky)
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    generate_dataset(target, draft, tok, inp, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW, batch_size=3,
                     progress=False)
    records = _read(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    assert records[2]["error"] == "generation failed: RuntimeError: simulated device failure"
    assert all("completion" in r for i, r in enumerate(records) if i != 2)

    # a rerun keeps the error record unless asked to retry errors
    monkeypatch.setattr(dg, "_run_batch", real)
    again = generate_dataset(target, draft, tok, inp, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW, progress=False)
    assert again.generated == 0 and again.skipped == len(rows) and again.errors == 1
    retried = generate_dataset(target, draft, tok, inp, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW,
                               retry_errors=True, progress=False)
    assert retried.generated == 1 and retried.errors == 0
    assert _read(tmp_path / "out.jsonl")[2]["completion"] == _plain_greedy(target, tok, rows[2]["prompt"])


def test_resume_after_crash_loses_no_finished_record(pair, tmp_path, monkeypatch):
    target, draft, tok = pair
    rows = _prompts(9)
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    generate_dataset(target, draft, tok, inp, tmp_path / "ref.jsonl", max_new_tokens=MAX_NEW, batch_size=2,
                     progress=False)
    reference = _strip_timing(_read(tmp_path / "ref.jsonl"), counters=False)

    real, calls = dg._run_batch, []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies mid-run
        return real(*args)

    monkeypatch.setattr(dg, "_run_batch", crash_on_third)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(target, draft, tok, inp, out, max_new_tokens=MAX_NEW, batch_size=2, progress=False)
    assert not out.exists()
    part = tmp_path / "out.jsonl.parts" / "part-00000.jsonl"
    assert len(_read(part)) == 4  # two finished batches, durably written
    with open(part, "a") as f:
        f.write('{"id": "p8", "index": 8, "compl')  # and a line cut by the crash

    monkeypatch.setattr(dg, "_run_batch", real)
    summary = generate_dataset(target, draft, tok, inp, out, max_new_tokens=MAX_NEW, batch_size=2, progress=False)
    assert summary.skipped == 4 and summary.generated == 5
    assert _strip_timing(_read(out), counters=False) == reference
    # a longer input later: only the new record is generated
    rows.append({"id": "extra", "prompt": "w10 w20"})
    _write_jsonl(tmp_path / "in.jsonl", rows)
    summary = generate_dataset(target, draft, tok, inp, out, max_new_tokens=MAX_NEW, progress=False)
    assert summary.generated == 1 and summary.records == 10


def test_datasets_dataset_input(pair, tmp_path):
    datasets = pytest.importorskip("datasets")
    target, draft, tok = pair
    rows = _prompts(5)
    generate_dataset(target, draft, tok, _write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "a.jsonl",
                     max_new_tokens=MAX_NEW, progress=False)
    ds = datasets.Dataset.from_list([{"question": r["prompt"], "key": r["id"]} for r in rows])
    generate_dataset(target, draft, tok, ds, tmp_path / "b.jsonl", max_new_tokens=MAX_NEW, prompt_field="question",
                     id_field="key", progress=False)
    assert _strip_timing(_read(tmp_path / "a.jsonl"), False) == _strip_timing(_read(tmp_path / "b.jsonl"), False)
    # plain strings are prompts too, their index is their id
    generate_dataset(target, draft, tok, [r["prompt"] for r in rows], tmp_path / "c.jsonl", max_new_tokens=MAX_NEW,
                     progress=False)
    assert [r["id"] for r in _read(tmp_path / "c.jsonl")] == list(range(5))


def test_chat_template_switch(pair, tmp_path):
    target, draft, _ = pair
    from speculoos_hf.toy import toy_tokenizer

    tok = toy_tokenizer()
    messages = [{"role": "user", "content": "w05 w06"}]
    rows = [{"id": "s", "prompt": "w05 w06"}, {"id": "m", "prompt": messages}]
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    out = generate_dataset(target, draft, tok, inp, tmp_path / "none.jsonl", max_new_tokens=4, progress=False)
    recs = _read(tmp_path / "none.jsonl")
    assert recs[0]["prompt_tokens"] == 2 and "no chat template" in recs[1]["error"] and out.errors == 1

    tok.chat_template = "{% for m in messages %}w58 {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w57{% endif %}"
    generate_dataset(target, draft, tok, inp, tmp_path / "chat.jsonl", max_new_tokens=4, chat_template=True,
                     progress=False)
    recs = _read(tmp_path / "chat.jsonl")
    assert [r["prompt_tokens"] for r in recs] == [4, 4]  # w58 w05 w06 w57
    assert recs[0]["completion"] == recs[1]["completion"] == _plain_greedy(target, tok, "w58 w05 w06 w57", 4)
    assert recs[1]["prompt"] == messages


def test_sampling_is_seeded_per_batch(pair, tmp_path):
    target, draft, tok = pair
    inp = _write_jsonl(tmp_path / "in.jsonl", _prompts(6))
    # a fixed K: with "auto" the number of drafts per round (hence the random numbers drawn) depends on timing
    kw = dict(max_new_tokens=MAX_NEW, do_sample=True, temperature=1.5, batch_size=3, num_draft_tokens=4, progress=False)
    texts = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_dataset(target, draft, tok, inp, tmp_path / f"{name}.jsonl", seed=seed, **kw)
        texts[name] = [r["completion"] for r in _read(tmp_path / f"{name}.jsonl")]
    assert texts["a"] == texts["b"] and texts["a"] != texts["c"]


# ---------------------------------------------------------------------------------- command line, processes


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory, pair):
    target, draft, tok = pair
    root = tmp_path_factory.mktemp("toy_models")
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def _cli_args(root, inp, out, *extra):
    return ["--target", str(root / "target"), "--draft", str(root / "draft"), "--input", str(inp), "--output",
            str(out), "--max-new-tokens", str(MAX_NEW), "--batch-size", "2", "--num-draft-tokens", "3", "--dtype",
            "float32", "--no-progress", *extra]


def test_cli_single_process(pair, saved_pair, tmp_path):
    from speculoos_hf.cli_generate import main

    target, draft, tok = pair
    rows = _prompts(5)
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(_cli_args(saved_pair, inp, tmp_path / "cli.jsonl")) == 0
    generate_dataset(target, draft, tok, inp, tmp_path / "py.jsonl", max_new_tokens=MAX_NEW, batch_size=2,
                     num_draft_tokens=3, progress=False)
    assert _strip_timing(_read(tmp_path / "cli.jsonl")) == _strip_timing(_read(tmp_path / "py.jsonl"))


def test_cli_offloaded_target(saved_pair, tmp_path, capsys):
    """--target-max-memory: accelerate puts what does not fit on disk; the records are the same."""
    from speculoos_hf.cli_generate import main

    inp = _write_jsonl(tmp_path / "in.jsonl", _prompts(4))
    assert main(_cli_args(saved_pair, inp, tmp_path / "mem.jsonl")) == 0
    assert main(_cli_args(saved_pair, inp, tmp_path / "off.jsonl", "--target-max-memory", "cpu=40KB")) == 0
    assert "disk" in capsys.readouterr().err  # the placement line: part of the target is on disk
    assert (tmp_path / "off.jsonl.offload").is_dir()
    assert _strip_timing(_read(tmp_path / "off.jsonl")) == _strip_timing(_read(tmp_path / "mem.jsonl"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")
def test_two_processes_merge_equals_single_process(saved_pair, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): each takes its share, the merged file equals one process's."""
    from speculoos_hf.cli_generate import main

    rows = _prompts(12)
    rows.insert(4, {"id": "bad", "prompt": ""})
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(_cli_args(saved_pair, inp, tmp_path / "one.jsonl")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LOCAL_RANK", None)
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "speculoos_hf.cli_generate",
           *_cli_args(saved_pair, inp, tmp_path / "two.jsonl")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 2 process(es)" in proc.stderr  # really two processes in one group
    one, two = _read(tmp_path / "one.jsonl"), _read(tmp_path / "two.jsonl")
    assert len(two) == len(rows) and not (tmp_path / "two.jsonl.parts").exists()
    assert _strip_timing(two) == _strip_timing(one)
