"""Issue 26: the dataset tool's records as a user expects them. Rows ended by a stop string inside a batch, with and
without a draft; generation kwargs the tool owns; tables, column dicts and DatasetDicts as input; a byte-order mark;
NaN ids; retrying fixed input lines; the options stored in every record and a resume under others refused.

Models: the toy pair of speculoos_hf.glue.toy (tiny float32 Llamas over a word-level vocabulary)."""

from __future__ import annotations

import copy
import json
import math

import pytest

from speculoos_hf.dataset import DatasetJob, ForeignOutputError, generate_dataset
from speculoos_hf.dataset.option_checks import OptionError
from speculoos_hf.dataset.store import OtherOptionsError
from speculoos_hf.glue.toy import toy_pair

MAX_NEW = 8
PROMPTS = [" ".join(f"w{(7 * i + 3 * j) % 59:02d}" for j in range(1 + (i * 3) % 5)) for i in range(10)]


@pytest.fixture(scope="module")
def pair():
    return toy_pair()


def _read(path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    with open(path, encoding="utf-8") as f:  # standard JSON only: NaN or Infinity fail here
        return [json.loads(line, parse_constant=refuse) for line in f]


def _own(target, tok, prompt: str, **kwargs) -> list[int]:
    """The target's own greedy tokens for this prompt alone (a row alone ends exactly where it stops)."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def _stop_word(target, tok) -> str:
    """A word inside the greedy completions of several prompts, but not all: some rows stop early, some run on."""
    counts: dict[str, int] = {}
    for p in PROMPTS:
        for w in set(tok.decode(_own(target, tok, p)[1:-1]).split()):
            counts[w] = counts.get(w, 0) + (w.startswith("w"))
    return max(sorted(counts), key=counts.get)


# ---------------------------------------------------------------------------------------------- case 1


@pytest.mark.parametrize("eos", [True, False], ids=["eos", "no-eos"])
def test_rows_end_at_their_stop_string_with_and_without_a_draft(pair, tmp_path, eos):
    """A batch where some rows hit the stop string and others run on: the baseline (plain generate(), which pads a
    stopped row, or without an EOS goes on generating for it) counts each row's tokens up to its stop, as the
    speculative path does and as the row generated alone gives."""
    target, draft, tok = pair
    if not eos:
        target = copy.deepcopy(target)
        target.generation_config.eos_token_id = None
    stop = _stop_word(target, tok)
    own = [_own(target, tok, p, stop_strings=[stop], tokenizer=tok) for p in PROMPTS]
    assert any(len(o) < MAX_NEW for o in own) and any(len(o) == MAX_NEW for o in own)  # the case of the issue
    reasons = ["stop" if len(o) < MAX_NEW or tok.decode(o).endswith(stop) else "length" for o in own]
    for name, model in (("plain", None), ("draft", draft)):
        generate_dataset(target, model, tok, PROMPTS, tmp_path / f"{name}.jsonl", max_new_tokens=MAX_NEW,
                         batch_size=len(PROMPTS), stop_strings=[stop], num_draft_tokens=3, progress=False)
        records = _read(tmp_path / f"{name}.jsonl")
        assert [r["new_tokens"] for r in records] == [len(o) for o in own], name
        assert [r["completion"] for r in records] == [tok.decode(o, skip_special_tokens=True) for o in own], name
        assert [r["finish_reason"] for r in records] == reasons, name


# ---------------------------------------------------------------------------------------------- case 2


@pytest.mark.parametrize("kwargs, message", [
    ({"num_return_sequences": 2}, "num_return_sequences=2: a record holds one completion per prompt"),
    ({"max_new_tokens": 4}, "cannot set 'max_new_tokens': it is the job's own max_new_tokens"),
    ({"max_length": 6}, "cannot set 'max_length'"),
    ({"do_sample": True}, "cannot set 'do_sample'"),
    ({"stopping_criteria": []}, "cannot set 'stopping_criteria'"),
    ({"pad_token_id": 0}, "cannot set 'pad_token_id'"),
])
def test_generation_kwargs_the_tool_owns_are_refused(pair, tmp_path, kwargs, message):
    target, draft, tok = pair
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate_dataset(target, draft, tok, PROMPTS, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW,
                         generation_kwargs=kwargs, progress=False)
    assert not list(tmp_path.iterdir())


def test_other_generation_kwargs_reach_generate_and_are_stored(pair, tmp_path):
    """min_new_tokens is not the tool's own: it reaches generate() (EOS is held back), and the records say so."""
    target, _, tok = pair
    generate_dataset(target, None, tok, PROMPTS, tmp_path / "out.jsonl", max_new_tokens=MAX_NEW,
                     generation_kwargs={"min_new_tokens": MAX_NEW}, progress=False)
    records = _read(tmp_path / "out.jsonl")
    assert [r["new_tokens"] for r in records] == [MAX_NEW] * len(PROMPTS)
    assert [r["completion"] for r in records] == [tok.decode(_own(target, tok, p, min_new_tokens=MAX_NEW),
                                                             skip_special_tokens=True) for p in PROMPTS]
    assert records[0]["options"]["generation_kwargs"] == {"min_new_tokens": MAX_NEW}


# ---------------------------------------------------------------------------------------------- case 3


def test_tables_and_columns_are_rows_and_a_dataset_dict_is_refused(pair, tmp_path):
    target, draft, tok = pair
    rows = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS[:4])]
    kw = dict(max_new_tokens=MAX_NEW, num_draft_tokens=3, progress=False)
    generate_dataset(target, draft, tok, rows, tmp_path / "rows.jsonl", **kw)
    expected = [{k: v for k, v in r.items() if k != "seconds"} for r in _read(tmp_path / "rows.jsonl")]
    columns = {"id": [r["id"] for r in rows], "prompt": [r["prompt"] for r in rows]}
    inputs = {"columns": columns}
    pandas = pytest.importorskip("pandas")
    inputs["frame"] = pandas.DataFrame(rows)
    for name, data in inputs.items():
        generate_dataset(target, draft, tok, data, tmp_path / f"{name}.jsonl", **kw)
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in _read(tmp_path / f"{name}.jsonl")] == expected

    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)})
    with pytest.raises(ValueError, match=r"DatasetDict with splits \['train', 'test'\]: pass one split, e.g. "
                                         r"data\['train'\]"):
        generate_dataset(target, draft, tok, splits, tmp_path / "dict.jsonl", **kw)
    with pytest.raises(ValueError, match="not a dict of equal-length columns"):
        generate_dataset(target, draft, tok, {"id": ["a", "b"], "prompt": ["w01"]}, tmp_path / "ragged.jsonl", **kw)
    assert not (tmp_path / "dict.jsonl").exists() and not (tmp_path / "ragged.jsonl").exists()


def test_a_field_no_record_holds_is_refused(pair, tmp_path):
    """A misspelt field name would turn every record into an error record: refused, naming the option."""
    target, draft, tok = pair
    rows = [{"id": "a", "prompt": "w01 w02"}]
    with pytest.raises(OptionError, match=r"prompt_field 'question': no record of the input has this field"):
        generate_dataset(target, draft, tok, rows, tmp_path / "out.jsonl", prompt_field="question", progress=False)
    with pytest.raises(OptionError, match=r"id_field 'key': no record"):
        generate_dataset(target, draft, tok, rows, tmp_path / "out.jsonl", id_field="key", progress=False)
    assert not list(tmp_path.iterdir())  # the lock file taken for the check is gone too


# ---------------------------------------------------------------------------------------------- cases 5, 6


def test_a_byte_order_mark_is_not_part_of_the_first_record(pair, tmp_path):
    target, draft, tok = pair
    lines = [json.dumps({"id": f"b{i}", "prompt": p}) for i, p in enumerate(PROMPTS[:3])]
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "bom.jsonl"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    marked.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")  # what Windows editors write
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    kw = dict(max_new_tokens=MAX_NEW, num_draft_tokens=3, progress=False)
    generate_dataset(target, draft, tok, str(plain), tmp_path / "a.jsonl", **kw)
    summary = generate_dataset(target, draft, tok, str(marked), tmp_path / "b.jsonl", **kw)
    assert summary.errors == 0
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _read(tmp_path / "a.jsonl")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in _read(tmp_path / "b.jsonl")] == strip


def test_nan_ids_are_missing_ids_and_the_output_is_standard_json(pair, tmp_path):
    """An id of NaN (JSONL's `NaN`, a float id column's missing value) stands for the index, as a missing id does;
    a prompt holding NaN gets an error record; every line is standard JSON and the next run resumes its output."""
    target, draft, tok = pair
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": NaN, "prompt": "w01 w02"}\n{"id": 7.5, "prompt": "w03"}\n'
                   '{"id": "m", "prompt": [{"role": "user", "content": "w04", "weight": Infinity}]}\n'
                   '{"id": -Infinity, "prompt": "w05 w06"}\n')
    out = tmp_path / "out.jsonl"
    kw = dict(max_new_tokens=MAX_NEW, num_draft_tokens=3, progress=False)
    generate_dataset(target, draft, tok, str(inp), out, **kw)
    records = _read(out)  # raises on NaN / Infinity
    assert [r["id"] for r in records] == [0, 7.5, "m", 3]
    assert "non-finite number" in records[2]["error"] and records[2]["prompt"][0]["weight"] is None
    again = generate_dataset(target, draft, tok, str(inp), out, **kw)
    assert again.generated == 0 and again.skipped == 4

    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"id": [1.0, math.nan, 3.0], "prompt": ["w01", "w02 w03", "w04"]})
    generate_dataset(target, draft, tok, frame, tmp_path / "frame.jsonl", **kw)
    assert [r["id"] for r in _read(tmp_path / "frame.jsonl")] == [1.0, 1, 3.0]
    assert generate_dataset(target, draft, tok, frame, tmp_path / "frame.jsonl", **kw).skipped == 3


# ---------------------------------------------------------------------------------------------- case 7


def test_retry_errors_redoes_a_fixed_input_line(pair, tmp_path):
    target, draft, tok = pair
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = [json.dumps({"id": f"g{i}", "prompt": p}) for i, p in enumerate(PROMPTS[:3])]
    inp.write_text("\n".join([good[0], '{"id": "fixme", "prompt": "w07 w08"', *good[1:]]) + "\n")
    kw = dict(max_new_tokens=MAX_NEW, num_draft_tokens=3, progress=False)
    assert generate_dataset(target, draft, tok, str(inp), out, **kw).errors == 1
    inp.write_text("\n".join([good[0], '{"id": "fixme", "prompt": "w07 w08"}', *good[1:]]) + "\n")  # fixed
    written = out.read_bytes()
    with pytest.raises(ForeignOutputError, match=r"an error record: --retry-errors / retry_errors=True redoes it"):
        generate_dataset(target, draft, tok, str(inp), out, **kw)
    assert out.read_bytes() == written
    summary = generate_dataset(target, draft, tok, str(inp), out, retry_errors=True, **kw)
    assert summary.generated == 1 and summary.errors == 0 and summary.skipped == 3
    fixed = _read(out)[1]
    assert fixed["id"] == "fixme" and fixed["completion"] == tok.decode(_own(target, tok, "w07 w08"),
                                                                       skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- the table's options


def test_every_record_states_its_options_and_a_resume_under_others_is_refused(pair, tmp_path):
    """The options that shape a record are written in each; a resume with other ones is refused before anything is
    written; drafting options (K) may change, they never change the distribution."""
    target, draft, tok = pair
    rows = PROMPTS[:4]
    out = tmp_path / "out.jsonl"
    generate_dataset(target, draft, tok, rows[:2], out, max_new_tokens=4, num_draft_tokens=3, progress=False)
    assert all(r["options"] == DatasetJob(max_new_tokens=4).record_options() for r in _read(out))
    assert _read(out)[0]["options"] == {"max_new_tokens": 4, "do_sample": False, "stop_strings": None,
                                        "chat_template": False}
    written = out.read_bytes()
    for other, named in ((dict(max_new_tokens=6), "max_new_tokens: 4 there, 6 now"),
                         (dict(max_new_tokens=4, do_sample=True), "do_sample: False there, True now"),
                         (dict(max_new_tokens=4, stop_strings=["w20"]), "stop_strings: None there, ['w20'] now")):
        with pytest.raises(OtherOptionsError, match=named.replace("[", r"\[").replace("]", r"\]")):
            generate_dataset(target, draft, tok, rows, out, num_draft_tokens=3, progress=False, **other)
        assert out.read_bytes() == written and not (tmp_path / "out.jsonl.parts").exists()
    summary = generate_dataset(target, draft, tok, rows, out, max_new_tokens=4, num_draft_tokens=2, progress=False)
    assert summary.skipped == 2 and summary.generated == 2

    legacy = tmp_path / "legacy.jsonl"  # written before the options were stored
    legacy.write_text(json.dumps({"id": 0, "index": 0, "prompt": rows[0], "completion": "w01"}) + "\n")
    with pytest.raises(OtherOptionsError, match="record 0 states none"):
        generate_dataset(target, draft, tok, rows, legacy, max_new_tokens=4, progress=False)


def test_sampling_options_are_stored_as_generate_gets_them():
    job = DatasetJob(do_sample=True, top_k=5, seed=3, model="--target t --dtype auto")
    assert job.record_options() == {"max_new_tokens": 128, "do_sample": True, "stop_strings": None,
                                    "chat_template": False, "temperature": 1.0, "top_p": 1.0, "top_k": 5, "seed": 3,
                                    "model": "--target t --dtype auto"}
    with pytest.raises(OptionError, match="temperature applies only when sampling"):
        DatasetJob(temperature=0.7)


def test_objects_in_generation_kwargs_are_stated_by_their_type():
    """A processor object is stated by its type: its text holds an address that differs at every run, and a resume
    would be refused for it."""
    from transformers import LogitsProcessorList, MinLengthLogitsProcessor

    def options():
        processors = LogitsProcessorList([MinLengthLogitsProcessor(3, eos_token_id=0)])
        return DatasetJob(generation_kwargs={"logits_processor": processors, "min_new_tokens": 2}).record_options()

    assert options() == options()
    assert options()["generation_kwargs"] == {
        "logits_processor": "<transformers.generation.logits_process.LogitsProcessorList>", "min_new_tokens": 2}
