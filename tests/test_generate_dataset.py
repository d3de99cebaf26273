"""Generation over a dataset: `generate_dataset` and the `speculoos-generate` command, one and two processes.

Models are the toy pair of speculoos_hf.glue.toy (tiny float32 Llamas over a word-level vocabulary, peaked logits):
greedy completions must equal the target's own plain greedy output for each prompt alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from speculoos_hf.dataset import DatasetJob, ForeignOutputError, generate_dataset, read_records
from speculoos_hf.dataset.plan import batches_by_length, round_robin
from speculoos_hf.dataset.runner import BatchRunner
from speculoos_hf.glue.toy import toy_pair

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
    for item in items:
        item.tokenize(tok, False, MAX_NEW, 512)
    batches = batches_by_length(items, 4)
    lengths = [len(it.input_ids) for b in batches for it in b]
    assert lengths == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [4, 4, 3]
    # accelerate's contiguous split of the round-robin order gives process r the batches r, r+n, ...
    assert round_robin(list(range(7)), 3) == [0, 3, 6, 1, 4, 2, 5]


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
    real = BatchRunner.run

    def flaky(runner, batch, seed):
        if any(item.id == "p2" for item in batch):
            raise RuntimeError("simulated device failure")
        return real(runner, batch, seed)

    monkeypatch.setattr(BatchRunner, "run", flaky)
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    generate_dataset(target, draft, tok, inp, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW, batch_size=3,
                     progress=False)
    records = _read(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    assert records[2]["error"] == "generation failed: RuntimeError: simulated device failure"
    assert all("completion" in r for i, r in enumerate(records) if i != 2)

    # a rerun keeps the error record unless asked to retry errors
    monkeypatch.setattr(BatchRunner, "run", real)
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

    real, calls = BatchRunner.run, []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies mid-run
        return real(*args)

    monkeypatch.setattr(BatchRunner, "run", crash_on_third)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(target, draft, tok, inp, out, max_new_tokens=MAX_NEW, batch_size=2, progress=False)
    assert not out.exists()
    part = tmp_path / "out.jsonl.parts" / "part-00000.jsonl"
    assert len(_read(part)) == 4  # two finished batches, durably written
    with open(part, "a") as f:
        f.write('{"id": "p8", "index": 8, "compl')  # and a line cut by the crash

    monkeypatch.setattr(BatchRunner, "run", real)
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
    from speculoos_hf.glue.toy import toy_tokenizer

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


def test_lone_surrogate_and_non_utf8_lines_get_their_own_error_records(pair, tmp_path):
    """A prompt holding a lone surrogate (valid JSON, not valid Unicode text) and a line that is not UTF-8 each
    get an error record; every other line is generated as plain generate() would; a rerun resumes, no crash."""
    target, draft, tok = pair
    good = _prompts(3)
    lines = [json.dumps(good[0]), '{"id": "lone", "prompt": "w01 \\ud800 w02"}', json.dumps(good[1]),
             '{"id": "chat", "prompt": [{"role": "user", "content": "w03 \\udfff"}]}', json.dumps(good[2])]
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "latin-1", "prompt": "caf\xe9"}\n')
    out = tmp_path / "out.jsonl"
    kw = dict(max_new_tokens=MAX_NEW, batch_size=2, num_draft_tokens=3, progress=False)
    summary = generate_dataset(target, draft, tok, str(inp), out, **kw)
    records = _read(out)
    assert [r["id"] for r in records] == ["p0", "lone", "p1", "chat", "p2", 5]  # line 6's id is unreadable
    assert "lone surrogate U+D800" in records[1]["error"] and records[1]["prompt"] == "w01 \ud800 w02"
    assert "lone surrogate U+DFFF" in records[3]["error"]
    assert records[5]["error"].startswith("line 6: not UTF-8 text")
    for row, rec in zip(good, records[0:5:2]):
        assert rec["completion"] == _plain_greedy(target, tok, row["prompt"])
    assert summary.errors == 3 and summary.generated == 6
    again = generate_dataset(target, draft, tok, str(inp), out, **kw)
    assert again.generated == 0 and again.skipped == 6
    assert _strip_timing(_read(out)) == _strip_timing(records)


def test_resume_refuses_an_output_of_another_input(pair, tmp_path):
    """Records are matched to the input by index, id and prompt: a file written for other prompts (here without
    ids, so ids are indices and match) is refused, naming the file, and left as it was."""
    target, draft, tok = pair
    first = [r["prompt"] for r in _prompts(4)]
    other = [r["prompt"] for r in _prompts(8)[4:]]
    out = tmp_path / "out.jsonl"
    kw = dict(max_new_tokens=MAX_NEW, num_draft_tokens=3, progress=False)
    generate_dataset(target, draft, tok, first, out, **kw)
    written = out.read_bytes()
    with pytest.raises(ForeignOutputError, match=re.escape(str(out)) + r" holds records of another input "
                       r"\(record 0 has prompt"):
        generate_dataset(target, draft, tok, other, out, **kw)
    with pytest.raises(ForeignOutputError, match="a record with index 3, but the input has 3 records"):
        generate_dataset(target, draft, tok, first[:3], out, **kw)
    assert out.read_bytes() == written and not (tmp_path / "out.jsonl.parts").exists()

    part = tmp_path / "out.jsonl.parts" / "part-00000.jsonl"  # a crashed run's part, of another input
    part.parent.mkdir()
    part.write_text(json.dumps({"id": 4, "index": 4, "prompt": "w09", "completion": "w01"}) + "\n")
    with pytest.raises(ForeignOutputError, match=re.escape(str(part))):
        generate_dataset(target, draft, tok, [*first, "w10 w11"], out, **kw)
    shutil.rmtree(part.parent)

    notes = tmp_path / "notes.jsonl"  # not an output of this tool at all
    notes.write_text('{"note": "keep me"}\n')
    with pytest.raises(ForeignOutputError, match="is not an output of speculoos-generate"):
        generate_dataset(target, draft, tok, first, notes, **kw)
    assert notes.read_text() == '{"note": "keep me"}\n'

    again = generate_dataset(target, draft, tok, first, out, **kw)  # its own input still resumes
    assert again.skipped == 4 and again.generated == 0 and out.read_bytes() == written


@pytest.mark.parametrize("options, message", [
    (dict(num_draft_tokens=0), "num_draft_tokens must be an integer >= 1 or 'auto', got 0"),
    (dict(draft_confidence_threshold=1.5), "draft_confidence_threshold must be a probability in [0, 1), got 1.5"),
    (dict(do_sample=True, temperature=0), "temperature must be > 0"),
    (dict(top_p=0.0), "top_p must be in (0, 1]"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(batch_size=2.5), "batch_size must be an integer >= 1"),
    (dict(prompt_lookup_num_tokens=-1), "prompt_lookup_num_tokens must be an integer >= 1"),
    (dict(stop_strings=[""]), "stop_strings must be non-empty strings"),
])
def test_invalid_options_are_refused_before_anything_is_read(pair, tmp_path, options, message):
    target, draft, tok = pair
    with pytest.raises(ValueError, match=re.escape(message)):
        DatasetJob(**options)
    with pytest.raises(ValueError, match=re.escape(message)):  # the input does not exist: it is never read
        generate_dataset(target, draft, tok, str(tmp_path / "missing.jsonl"), tmp_path / "out.jsonl", **options)
    assert not list(tmp_path.iterdir())


def test_unknown_option_and_job_object(pair, tmp_path):
    target, draft, tok = pair
    with pytest.raises(TypeError, match="unknown options \\['max_new_token'\\]"):
        generate_dataset(target, draft, tok, ["w01"], tmp_path / "a.jsonl", max_new_token=3)
    job = DatasetJob(max_new_tokens=MAX_NEW, num_draft_tokens=3, progress=False)
    generate_dataset(target, draft, tok, ["w01 w02"], tmp_path / "a.jsonl", job)
    generate_dataset(target, draft, tok, ["w01 w02"], tmp_path / "b.jsonl", max_new_tokens=MAX_NEW,
                     num_draft_tokens=3, progress=False)
    assert _strip_timing(_read(tmp_path / "a.jsonl")) == _strip_timing(_read(tmp_path / "b.jsonl"))
    with pytest.raises(TypeError, match="either job= or options"):
        generate_dataset(target, draft, tok, ["w01"], tmp_path / "c.jsonl", job, seed=1)


def test_prompt_lookup_alone_equals_plain_generate(pair, tmp_path):
    """prompt_lookup_num_tokens with no draft model: speculoos' prompt lookup, the target's own greedy text."""
    target, _, tok = pair
    rows = [{"id": "rep", "prompt": "w01 w02 w03 w01 w02 w03 w01 w02"}, *_prompts(4)]
    generate_dataset(target, None, tok, rows, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW, batch_size=2,
                     prompt_lookup_num_tokens=3, progress=False)
    records = _read(tmp_path / "out.jsonl")
    assert [r["completion"] for r in records] == [_plain_greedy(target, tok, row["prompt"]) for row in rows]
    assert records[0]["draft_tokens_proposed"] > 0  # the repeated prompt: lookup really drafts


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
                     num_draft_tokens=3, progress=False, model=f"--target {saved_pair / 'target'} --dtype float32")
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


def test_cli_dtype_defaults_to_the_checkpoints_own(pair, saved_pair, tmp_path):
    """Without --dtype a float32 checkpoint stays float32 (from_pretrained's "auto"): the completions are the model's
    own generate()'s. Cast to bfloat16 (the old default) some completions change, so this test catches that."""
    from speculoos_hf.cli_generate import main

    target, _, tok = pair
    rows = _prompts(8)
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    common = ["--target", str(saved_pair / "target"), "--draft", str(saved_pair / "draft"), "--input", inp,
              "--max-new-tokens", str(MAX_NEW), "--num-draft-tokens", "3", "--no-progress"]
    own = [_plain_greedy(target, tok, row["prompt"]) for row in rows]
    assert main([*common, "--output", str(tmp_path / "auto.jsonl")]) == 0
    assert [r["completion"] for r in _read(tmp_path / "auto.jsonl")] == own
    assert main([*common, "--output", str(tmp_path / "bf16.jsonl"), "--dtype", "bfloat16"]) == 0
    assert [r["completion"] for r in _read(tmp_path / "bf16.jsonl")] != own


def test_cli_suffix_cache_is_one_cache_for_the_run_kept_in_a_file(pair, saved_pair, tmp_path):
    """--prompt-lookup N --suffix-cache PATH: one SuffixCache takes every row of every batch and is saved at the end;
    the next run loads it and drafts the same prompts' answers from it. The completions stay the target's own."""
    suffix_cache = pytest.importorskip("speculoos_hf.drafters.suffix_cache")
    from speculoos_hf.cli_generate import main

    target, _, tok = pair
    rows = _prompts(4)
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    cache_file = tmp_path / "cache.npz"
    common = ["--target", str(saved_pair / "target"), "--input", inp, "--max-new-tokens", str(MAX_NEW),
              "--batch-size", "2", "--prompt-lookup", "4", "--suffix-cache", str(cache_file), "--no-progress"]
    own = [_plain_greedy(target, tok, row["prompt"]) for row in rows]
    assert main([*common, "--output", str(tmp_path / "a.jsonl")]) == 0
    first = _read(tmp_path / "a.jsonl")
    assert [r["completion"] for r in first] == own
    assert len(suffix_cache.SuffixCache.load(cache_file)) == len(rows)
    assert main([*common, "--output", str(tmp_path / "b.jsonl")]) == 0
    second = _read(tmp_path / "b.jsonl")
    assert [r["completion"] for r in second] == own
    assert sum(r["draft_tokens_accepted"] for r in second) > sum(r["draft_tokens_accepted"] for r in first)
    assert len(suffix_cache.SuffixCache.load(cache_file)) == 2 * len(rows)


def test_cli_refuses_an_output_of_another_input_before_loading(saved_pair, tmp_path, capsys, monkeypatch):
    """The output is checked before the models load (a stand-in loader fails if reached): exit 2, one line."""
    from speculoos_hf import cli_generate

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli_generate, "load_model", no_loading)
    out = tmp_path / "out.jsonl"
    line = json.dumps({"id": 0, "index": 0, "prompt": "w09", "completion": "w01"}) + "\n"
    out.write_text(line)
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"prompt": "w01 w02"}])  # no id: the index stands for it
    with pytest.raises(SystemExit) as exited:
        cli_generate.main(["--target", str(saved_pair / "target"), "--input", inp, "--output", str(out)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"speculoos-generate: error: argument --output: {out} holds records of another input (record 0 "
                   "has prompt 'w09' where the input has 'w01 w02'); write to another output file, or delete this "
                   "one to start over\n")
    assert out.read_text() == line and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


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
