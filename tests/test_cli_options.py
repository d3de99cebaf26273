"""Issue 26, cases 8-12 and the sweep: every option of `speculoos-generate` and `speculoos-bench` given a bad value
exits with status 2 and one line naming the option, before any model is loaded and before any file is created.

The tables below are the sweep (a test checks they hold every option that takes a value). `python
tests/test_cli_options.py` prints them as a Markdown table of what each bad value really gives."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import pytest

GENERATE, BENCH = "speculoos-generate", "speculoos-bench"

# (command, option, the arguments added to a good command line, what the message says after "argument OPTION: ")
CASES = [
    (GENERATE, "--input", ["--input", "{tmp}/prompts.jsnol"], "{tmp}/prompts.jsnol: no such file or directory"),
    (GENERATE, "--input", ["--input", "prompts.jsnol"], "prompts.jsnol: no such file or directory"),
    (GENERATE, "--input", ["--input", "{dir}"], "is a directory but not a dataset saved by save_to_disk"),
    (GENERATE, "--split", ["--split", "test"], "applies to a dataset, not a file"),
    (GENERATE, "--split", ["--input", "{splits}", "--split", "validation"], "no split 'validation' in"),
    (GENERATE, "--output", ["--output", "{dir}"], "{dir} is a directory, not a file"),
    (GENERATE, "--output", ["--output", "{file}/out.jsonl"], "{file} is not a directory"),
    (GENERATE, "--prompt-field", ["--prompt-field", "question"], "'question': no record of the input has this field"),
    (GENERATE, "--id-field", ["--id-field", "key"], "'key': no record of the input has this field"),
    (GENERATE, "--max-new-tokens", ["--max-new-tokens", "0"], "expected an integer >= 1, got '0'"),
    (GENERATE, "--temperature", ["--do-sample", "--temperature", "0"], "expected a number > 0, got '0'"),
    (GENERATE, "--temperature", ["--temperature", "0.7"], "applies only when sampling: add do_sample"),
    (GENERATE, "--top-p", ["--do-sample", "--top-p", "1.5"], "expected a number in (0, 1], got '1.5'"),
    (GENERATE, "--top-k", ["--do-sample", "--top-k", "-1"], "expected an integer >= 0, got '-1'"),
    (GENERATE, "--stop", ["--stop", ""], "must be non-empty strings"),
    (GENERATE, "--batch-size", ["--batch-size", "0"], "expected an integer >= 1, got '0'"),
    (GENERATE, "--seed", ["--seed", "x"], "invalid int value: 'x'"),
    (GENERATE, "--num-draft-tokens", ["--num-draft-tokens", "0"], "expected an integer >= 1 or 'auto', got '0'"),
    (GENERATE, "--draft-confidence-threshold", ["--draft-confidence-threshold", "1.5"],
     "expected a number in [0, 1), got '1.5'"),
    (GENERATE, "--prompt-lookup", ["--prompt-lookup", "0"], "expected an integer >= 1, got '0'"),
    (GENERATE, "--suffix-cache", ["--prompt-lookup", "3", "--suffix-cache", "{dir}"], "is a directory"),
    (GENERATE, "--suffix-cache", ["--prompt-lookup", "3", "--suffix-cache", "{file}"], "cannot be loaded"),
    (GENERATE, "--target", ["--target", "{tmp}/no-model"], "{tmp}/no-model: no such directory"),
    (GENERATE, "--target", ["--target", "{dir}"], "is a directory without config.json"),
    (GENERATE, "--draft", ["--draft", "{tmp}/no-draft"], "{tmp}/no-draft: no such directory"),
    (GENERATE, "--tokenizer", ["--tokenizer", "{file}"], "is a file"),
    (GENERATE, "--tokenizer", ["--tokenizer", "{dir}"], "cannot load a tokenizer from"),
    (GENERATE, "--dtype", ["--dtype", "int8"], "invalid choice: 'int8'"),
    (GENERATE, "--device", ["--device", "nonsense"], "'nonsense' is not a device name"),
    (GENERATE, "--target-device-map", ["--target-device-map", "everywhere"], "expected auto, balanced"),
    (GENERATE, "--target-device-map", ["--target-device-map", "{{\"model\": 0"], "not valid JSON"),
    (GENERATE, "--target-max-memory", ["--target-max-memory", "lots"], "expected a size such as 2GiB"),
    (GENERATE, "--offload-folder", ["--offload-folder", "{tmp}/off"], "needs --target-max-memory or"),
    (GENERATE, "--offload-folder", ["--target-max-memory", "cpu=1GiB", "--offload-folder", "{file}"],
     "is a file, not a folder"),
    (GENERATE, "--draft-int8", ["--draft-int8"], "needs --draft"),
    (BENCH, "--target", ["--target", "{tmp}/none"], "{tmp}/none: no such directory"),
    (BENCH, "--draft", ["--draft", "{file}"], "is a file"),
    (BENCH, "--k", ["--k", "0"], "expected an integer >= 1 or 'auto', got '0'"),
    (BENCH, "--assisted-k", ["--assisted-k", "0"], "expected integers >= 1, got 0"),
    (BENCH, "--adaptive", ["--adaptive", "1.5"], "expected thresholds in [0, 1), got 1.5"),
    (BENCH, "--adaptive-k", ["--adaptive-k", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--prompt-lookup", ["--prompt-lookup", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--max-matching-ngram", ["--max-matching-ngram", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--suffix-cache-tokens", ["--suffix-cache-tokens", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--method", ["--method", "x", "notjson"], "x 'notjson': expected a JSON object of generate() arguments"),
    (BENCH, "--modes", ["--modes", "beam"], "invalid choice: 'beam'"),
    (BENCH, "--temperature", ["--temperature", "0"], "expected a number > 0, got 0.0"),
    (BENCH, "--max-new-tokens", ["--max-new-tokens", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--prompts", ["--prompts", "{tmp}/missing.json"], "not a JSON list of prompts"),
    (BENCH, "--prompt-class", ["--prompt-class", "poetry"], "invalid choice: 'poetry'"),
    (BENCH, "--prompt-class", ["--prompt-class", "prose"], "no prompts of class prose"),
    (BENCH, "--num-prompts", ["--num-prompts", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--batch-sizes", ["--batch-sizes", "0"], "expected integers >= 1, got 0"),
    (BENCH, "--batch-k", ["--batch-k", "zero"], "expected an integer >= 1 or 'auto' or 'best', got 'zero'"),
    (BENCH, "--batch-k", ["--batch-sizes", "2", "--batch-k", "best", "--k"], "best needs a hand-set speculoos"),
    (BENCH, "--batch-max-new-tokens", ["--batch-max-new-tokens", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--batch-repeats", ["--batch-repeats", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--draft-noise", ["--draft-noise", "-1"], "expected a number >= 0, got -1.0"),
    (BENCH, "--dtype", ["--dtype", "int4"], "invalid choice: 'int4'"),
    (BENCH, "--draft-dtype", ["--draft-dtype", "int4"], "invalid choice: 'int4'"),
    (BENCH, "--target-max-memory", ["--target-max-memory", "lots"], "expected a size such as 2GiB"),
    (BENCH, "--offload-folder", ["--offload-folder", "{tmp}/off"], "needs --target-max-memory"),
    (BENCH, "--profile-m", ["--profile", "--profile-m", "0"], "expected integers >= 1, got 0"),
    (BENCH, "--profile-batch-sizes", ["--profile", "--profile-batch-sizes", "0"], "expected integers >= 1, got 0"),
    (BENCH, "--profile-max-tokens", ["--profile", "--profile-max-tokens", "4"], "leaves batch size 8 no pass"),
    (BENCH, "--profile-repeats", ["--profile", "--profile-repeats", "0"], "expected an integer >= 1, got 0"),
    (BENCH, "--acceptance", ["--profile", "--acceptance", "1.5"], "expected a number in [0, 1], got 1.5"),
    (BENCH, "--profile-acceptance-tokens", ["--profile-acceptance-tokens", "-1"], "expected an integer >= 0, got -1"),
    (BENCH, "--profile-png", ["--profile", "--profile-png", "{dir}"], "is a directory, not a file"),
    (BENCH, "--simulate", ["--simulate", "{tmp}/none.json"], "{tmp}/none.json: no such file"),
    (BENCH, "--simulate", ["--simulate", "{file}"], "is not a profile written by speculoos-bench --profile"),
    (BENCH, "--summarize", ["--summarize", "{tmp}/nowhere"], "{tmp}/nowhere: no such directory"),
    (BENCH, "--seed", ["--seed", "x"], "invalid int value: 'x'"),
    (BENCH, "--out", ["--out", "{file}"], "is a file, not a folder"),
]


class ModelLoaded(AssertionError):
    """Raised by the stand-in loader: a bad value was let through to the models."""


def _refuse_to_load(*args, **kwargs):
    raise ModelLoaded("a model was loaded")


def make_world(root: Path) -> dict:
    """Saved toy models, an input, a prompt file, a folder and a file, a saved DatasetDict: the names a case uses."""
    from speculoos_hf.glue.toy import toy_pair

    target, draft, tok = toy_pair()
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "in.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"w0{i} w1{i}"}) + "\n"
                                          for i in range(3)))
    (root / "prompts.json").write_text(json.dumps([{"kind": "code", "text": "w01 w02"}, {"kind": "copy",
                                                                                          "text": "w03 w04 w03"}]))
    (root / "work").mkdir()
    (root / "work" / "adir").mkdir()
    (root / "work" / "notes.txt").write_text("not a model, not a cache\n")
    names = {"dir": str(root / "work" / "adir"), "file": str(root / "work" / "notes.txt"), "tmp": str(root / "work")}
    try:
        import datasets

        rows = [{"prompt": "w01"}]
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(root / "splits"))
        names["splits"] = str(root / "splits")
    except ImportError:
        pass
    return names


def base_argv(command: str, root: Path) -> list[str]:
    if command == GENERATE:
        return ["--target", str(root / "target"), "--input", str(root / "in.jsonl"), "--output",
                str(root / "work" / "out.jsonl"), "--no-progress"]
    return ["--target", str(root / "target"), "--draft", str(root / "draft"), "--prompts", str(root / "prompts.json"),
            "--prompt-class", "both", "--dtype", "float32", "--out", str(root / "work" / "bench"), "--quiet"]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_case(command: str, argv: list[str], root: Path) -> tuple[int, str, list[str]]:
    """(exit status, stderr, files made under the work folder) of the command given `argv`, in this process, with
    the model loader of both commands replaced by one that fails."""
    from speculoos_hf import cli_generate
    from speculoos_hf.bench import cli as bench_cli

    work = root / "work"
    before = _files(work)
    main = cli_generate.main if command == GENERATE else bench_cli.command
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(cli_generate, "load_model", _refuse_to_load)
        mp.setattr(bench_cli, "load_model", _refuse_to_load)
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue(), sorted(_files(work) - before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_options")
    return root, make_world(root)


def _expand(items, names: dict) -> list[str]:
    return [item.format(**names) for item in items]


@pytest.mark.parametrize("command, option, extra, message", CASES,
                         ids=[f"{c.split('-')[1]} {o} {' '.join(x)[:30]}" for c, o, x, _ in CASES])
def test_a_bad_value_exits_2_with_one_line_naming_the_option(world, command, option, extra, message):
    root, names = world
    if "{splits}" in " ".join(extra) and "splits" not in names:
        pytest.skip("datasets is not installed")
    code, err, made = run_case(command, base_argv(command, root) + _expand(extra, names), root)
    assert code == 2
    assert err.count("\n") == 1 and re.match(rf"{command}: error: argument {option}(/--[\w-]+)?: ", err), err
    assert message.format(**names) in err
    assert made == []


def _value_options(parser) -> set[str]:
    """Every option string of the parser that takes a value."""
    return {s for a in parser._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}


def test_the_sweep_holds_every_option_that_takes_a_value():
    from speculoos_hf import cli_generate
    from speculoos_hf.bench import cli as bench_cli

    for command, parser in ((GENERATE, cli_generate.parser()), (BENCH, bench_cli.parser())):
        swept = {option for c, option, _, _ in CASES if c == command}
        aliases = {"--prompt-kind"}  # another name of --prompt-class
        assert _value_options(parser) - aliases <= swept, command


def test_num_draft_tokens_auto_is_what_help_says(capsys):
    """Case 12: --help names 'auto' as the default of --num-draft-tokens, and 'auto' is accepted."""
    from speculoos_hf import cli_generate

    parser = cli_generate.parser()
    args = parser.parse_args(["--target", "t", "--input", "i", "--output", "o", "--num-draft-tokens", "auto"])
    assert cli_generate.job_from_args(args).num_draft_tokens == "auto"
    assert parser.parse_args(["--target", "t", "--input", "i", "--output", "o"]).num_draft_tokens is None
    help_text = " ".join(parser.format_help().split())
    assert "an integer >= 1 or 'auto' (the default, generate()'s" in help_text


def test_good_values_reach_the_models(world):
    """The stand-in loader is reached with good values: the refusals above are the values' own."""
    root, names = world
    for command in (GENERATE, BENCH):
        with pytest.raises(ModelLoaded):
            run_case(command, base_argv(command, root), root)
    assert not (root / "work" / "out.jsonl.lock").exists()


def print_table() -> None:
    """Every case as a Markdown row: option, bad value, exit status, the message, files made."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = make_world(root)
        print("| command | option | bad value | exit | message (stderr, one line) | files made |")
        print("| --- | --- | --- | ---: | --- | --- |")
        for command, option, extra, _ in CASES:
            if "{splits}" in " ".join(extra) and "splits" not in names:
                continue
            argv = _expand(extra, names)
            code, err, made = run_case(command, base_argv(command, root) + argv, root)
            shown = " ".join(argv).replace(str(root / "work"), "$TMP").replace(str(root), "$ROOT")
            message = err.strip().replace(str(root / "work"), "$TMP").replace(str(root), "$ROOT").replace("|", "\\|")
            lines = err.count("\n")
            print(f"| {command} | `{option}` | `{shown}` | {code} | {message}{'' if lines == 1 else f' ({lines} lines)'}"
                  f" | {', '.join(made) or 'none'} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print_table()
