"""speculoos-bench end to end on tiny local models: every method runs, figures are consistent, files are written;
prompt classes are reported separately; methods are data (generate() kwargs + whether the draft takes part)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_model, tiny_pair, tiny_tokenizer
from speculoos_hf import bench, enable_speculative
from speculoos_hf.bench import methods as bench_methods
from speculoos_hf.bench.prompts import select_prompts

COPY_PROMPTS = ["w05 w06 w07 w08 w05 w06 w07 w08 w05 w06", "w20 w21 w22 w20 w21 w22 w20"]


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    target, draft = tiny_pair(speculative=False)
    tok = tiny_tokenizer()
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    prompts = root / "prompts.json"
    items = [{"kind": "code", "text": "w01 w02 w03 w04"}, {"kind": "code", "text": "w10 w11"}]
    prompts.write_text(json.dumps(items + [{"kind": "copy", "text": t} for t in COPY_PROMPTS]))
    return root, prompts


def _bench(root, prompts, out, *extra):
    return bench.main([
        "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompts", str(prompts),
        "--max-new-tokens", "12", "--dtype", "float32", "--raw", "--out", str(out), "--quiet", *extra,
    ])


def engine_has_prompt_lookup() -> bool:
    """Whether generate(prompt_lookup_num_tokens=...) with no draft model runs through speculoos (the drafter seam)."""
    target = enable_speculative(tiny_model())
    try:
        target.generate(torch.tensor([[1, 2, 3, 1, 2]]), prompt_lookup_num_tokens=2, max_new_tokens=2, do_sample=False)
    except Exception:
        return False
    return getattr(target, "speculative_stats", None) is not None


def test_bench_reports_every_method(pair_dirs, tmp_path):
    root, prompts = pair_dirs
    result = _bench(root, prompts, tmp_path, "--k", "1", "3", "--batch-sizes", "1", "3", "--batch-repeats", "2",
                    "--adaptive", "0.5", "--adaptive-k", "4")
    names = [r["method"] for r in result["results"]]
    for mode in ("greedy", "sample"):
        assert f"target {mode}" in names
        assert f"assisted {mode} (defaults)" in names and f"assisted {mode} K=3" in names
        assert f"speculoos {mode} K=1" in names and f"speculoos {mode} K=3" in names
        assert f"speculoos {mode} K<=4 conf 0.5" in names
    assert {r["prompt_class"] for r in result["results"]} == {"code"}  # the default class
    assert 0 < result["cost_ratio_c"] < 10 and result["machine"]["memory_bandwidth_GBps"] > 0
    for r in result["results"]:
        assert r["new_tokens"] == 2 * 12 and r["tokens_per_s"] > 0 and r["speedup"] > 0
        if r["kind"] == "speculoos":
            assert 0 <= r["acceptance_rate"] <= 1 and 1 <= r["mean_accepted_length"] <= r["K"] + 1
            if "conf" not in r["method"]:
                assert r["theoretical_speedup"] == pytest.approx(
                    bench.theoretical_speedup(r["alpha"], r["K"], result["cost_ratio_c"])
                )
        if r["mode"] == "greedy" and r["kind"] == "speculoos":
            assert r["greedy_matches_target"] == 2  # float32: token for token the target's greedy output
    batch = result["batch_results"]
    assert [(r["batch_size"], r["mode"]) for r in batch] == [(1, "greedy"), (1, "sample"), (3, "greedy"), (3, "sample")]
    assert all(r["ratio"] > 0 and r["target_tokens_per_s"] > 0 and 0 <= r["acceptance_rate"] <= 1 for r in batch)
    assert (tmp_path / "bench.json").exists() and (tmp_path / "speedup_vs_k.png").stat().st_size > 1000
    assert json.loads((tmp_path / "bench.json").read_text())["results"] == json.loads(json.dumps(result["results"]))
    assert "speculoos greedy K=1" in (tmp_path / "bench.md").read_text()
    assert json.loads((tmp_path / "partial.json").read_text())["prompts_done"] == 2  # saved after every prompt


def test_prompt_classes_reported_separately_and_custom_methods(pair_dirs, tmp_path):
    root, prompts = pair_dirs
    result = _bench(root, prompts, tmp_path, "--prompt-class", "both", "--num-prompts", "1", "--k", "2",
                    "--no-assisted", "--modes", "greedy", "--method", "conf3", '{"num_draft_tokens": 3, '
                    '"draft_confidence_threshold": 0.3}')
    assert result["prompt_classes"] == ["code", "copy"] and result["prompt_class_of_each"] == ["code", "copy"]
    rows = {(r["prompt_class"], r["method"]): r for r in result["results"]}
    for cls in ("code", "copy"):
        assert rows[(cls, "target greedy")]["speedup"] == pytest.approx(1.0)
        assert rows[(cls, "speculoos greedy K=2")]["new_tokens"] == 12
        custom = rows[(cls, "speculoos greedy conf3")]
        assert custom["generate_kwargs"] == {"num_draft_tokens": 3, "draft_confidence_threshold": 0.3}
        assert custom["greedy_matches_target"] == 1 and custom["drafter"] == "model"
    assert set(result["sample_texts"]) == {"code", "copy"}
    md = (tmp_path / "bench.md").read_text()
    assert "**code prompts**" in md and "**copy prompts**" in md


def test_methods_are_data():
    args = bench.parser().parse_args(["--k", "4", "auto", "--adaptive", "0.6", "--prompt-lookup", "7", "--hybrid",
                                      "--max-matching-ngram", "3", "--modes", "greedy", "sample", "--block-verify",
                                      "--int8-twins"])
    by_name = {m.name: m for m in bench_methods.build_methods(args)}
    assert list(by_name)[0] == "target greedy"
    lookup = by_name["speculoos greedy lookup N=7 M=3"]
    assert lookup.kwargs == {"prompt_lookup_num_tokens": 7, "max_matching_ngram_size": 3} and not lookup.draft
    assert lookup.drafter == "lookup" and lookup.K == 7
    theirs = by_name["transformers greedy lookup N=7 M=3"]
    assert theirs.kind == "assisted" and not theirs.draft
    hybrid = by_name["speculoos greedy K=4 + lookup N=7 M=3"]
    assert hybrid.draft and hybrid.drafter == "hybrid" and hybrid.kwargs["num_draft_tokens"] == 4
    assert by_name["speculoos greedy K<=10 conf 0.6 + lookup N=7 M=3"].threshold == 0.6
    assert by_name["assisted greedy K=3"].assistant_config["num_assistant_tokens"] == 3
    assert by_name["speculoos greedy K=auto"].kwargs == {"num_draft_tokens": "auto"}
    assert by_name["speculoos sample K=4 block"].kwargs == {"num_draft_tokens": 4, "block_verification": True}
    assert "speculoos greedy K=4 block" not in by_name  # block verification only matters when sampling
    assert by_name["speculoos greedy K=auto int8"].kwargs == {"num_draft_tokens": "auto", "draft_quantization": "int8"}
    assert by_name["assisted sample K=3 int8"].draft_quantization == "int8"
    assert by_name["assisted greedy (defaults)"].draft_quantization is None
    assert [m.name for m in bench_methods.batch_methods(args, "greedy")] == [
        "speculoos greedy K=3", "speculoos greedy lookup N=7 M=3", "speculoos greedy K=3 + lookup N=7 M=3",
        "speculoos greedy K=3 int8"]
    assert "speculoos sample K=3 block" in [m.name for m in bench_methods.batch_methods(args, "sample")]


def test_transformers_prompt_lookup_runs_stock(tokenizer):
    target = enable_speculative(tiny_model())
    ids = tokenizer(COPY_PROMPTS[0], return_tensors="pt").input_ids
    method = bench_methods.transformers_lookup("greedy", 3)
    out, stats = bench_methods.generate(method, target, None, ids, None, max_new_tokens=8, pad_token_id=61)
    plain = target.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=61)
    assert stats is None and torch.equal(out, plain)


@pytest.mark.skipif(not engine_has_prompt_lookup(), reason="speculoos prompt lookup not in the engine yet")
def test_prompt_lookup_and_hybrid(pair_dirs, tmp_path):
    root, prompts = pair_dirs
    result = _bench(root, prompts, tmp_path, "--prompt-class", "both", "--k", "3", "--no-assisted", "--prompt-lookup",
                    "4", "--hybrid", "--batch-sizes", "2")
    rows = {(r["prompt_class"], r["method"]): r for r in result["results"]}
    for cls in ("code", "copy"):
        for mode in ("greedy", "sample"):
            for name in (f"speculoos {mode} lookup N=4", f"speculoos {mode} K=3 + lookup N=4",
                         f"transformers {mode} lookup N=4"):
                r = rows[(cls, name)]
                assert r["new_tokens"] == 2 * 12 and r["tokens_per_s"] > 0
                if mode == "greedy":
                    assert r["greedy_matches_target"] == 2, name
        assert rows[(cls, "speculoos greedy lookup N=4")]["draft_forwards"] == 0
    copy_lookup = rows[("copy", "speculoos greedy lookup N=4")]
    assert copy_lookup["mean_drafted_per_round"] > 0  # the copy prompts repeat n-grams: lookup finds matches
    batch = {r["method"] for r in result["batch_results"]}
    assert {"speculoos greedy lookup N=4", "speculoos greedy K=3 + lookup N=4"} <= batch


def test_prompt_sets_shipped():
    code, copy = select_prompts(None, "code", None), select_prompts(None, "copy", None)
    assert len(code) >= 10 and len(copy) >= 8 and {p.cls for p in code} == {"code"}
    both = select_prompts(None, "both", 2)
    assert [p.cls for p in both] == ["code", "copy", "code", "copy"]
    assert bench.load_prompts(None, "code", 3) == [p.text for p in code[:3]]  # notebook 03's call


def test_theoretical_speedup_formula():
    assert bench.theoretical_speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)
    assert bench.theoretical_speedup(1.0, 4, 0.0) == pytest.approx(5.0)
    assert bench.theoretical_speedup(0.5, 2, 0.25) == pytest.approx((1 - 0.5**3) / 0.5 / 1.5)


def test_cli_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "speculoos_hf.bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--target" in out.stdout and "--k" in out.stdout
    assert "--prompt-class" in out.stdout and "--prompt-lookup" in out.stdout and "--hybrid" in out.stdout


def test_assisted_int8_twin_uses_the_prepared_copy():
    """`--int8-twins`: transformers' assisted generation gets the same int8 copy speculoos drafts with."""
    import copy
    from dataclasses import replace

    from speculoos_hf.drafters.prepared import _COPIES

    target, draft = tiny_pair()
    ids = torch.tensor([[3, 9, 14, 2, 7]])
    method = replace(bench_methods.assisted("greedy", 2), draft_quantization="int8")
    out, stats = bench_methods.generate(method, target, draft, ids, copy.deepcopy(draft.generation_config),
                                        max_new_tokens=10)
    plain = bench_methods.stock_generate(target)(ids, max_new_tokens=10, do_sample=False)
    assert stats is None and torch.equal(out, plain)
    assert "int8" in _COPIES[draft] and _COPIES[draft]["int8"] is not draft


def test_draft_noise_perturbs_matrices_by_their_own_scale_seeded():
    """`--draft-noise SIGMA`: each weight matrix gets noise of SIGMA x its std, the same for the same seed."""
    from speculoos_hf.bench.cli import add_weight_noise

    a, b = tiny_model(seed=3), tiny_model(seed=3)
    before = {n: p.detach().clone() for n, p in a.named_parameters()}
    add_weight_noise(a, 0.5, seed=7)
    add_weight_noise(b, 0.5, seed=7)
    for name, p in a.named_parameters():
        delta = p.detach() - before[name]
        if p.dim() > 1:
            assert 0.3 < float(delta.std() / before[name].std()) < 0.7, name
        else:
            assert torch.equal(delta, torch.zeros_like(delta)), name  # norms and biases untouched
        assert torch.equal(p, dict(b.named_parameters())[name])
