"""speculoos-bench end to end on tiny local models: every method runs, figures are consistent, files are written;
prompt classes are reported separately; methods are data (generate() kwargs + whether the draft takes part)."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import entry_points
import sys

import pytest
import torch

from conftest import on_flat_machine, tiny_model, tiny_pair, tiny_tokenizer
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
    saved = json.loads((tmp_path / "bench.json").read_text())  # how the run was made, for benchmarks/
    assert saved["command"].startswith("speculoos-bench --target ") and "--k 1 3" in saved["command"]
    assert saved["commit"] and saved["date"][:2] == "20" and saved["recorded"] == "at run time"
    assert saved["machine"]["cpu_count"] > 0 and saved["machine"]["cpu_flags"] is not None
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
    with on_flat_machine():  # the cost model paces the copies: on a busy machine's wall clock it may copy nothing
        result = _bench(root, prompts, tmp_path, "--prompt-class", "both", "--k", "3", "--no-assisted",
                        "--prompt-lookup", "4", "--hybrid", "--batch-sizes", "2")
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
    for flag in ("--profile", "--table", "--suffix-cache", "--draft-dtype", "--batch-max-new-tokens"):
        assert flag in out.stdout


def test_cli_exits_0_after_a_run(pair_dirs, tmp_path):
    """The console command reports success (the result dict is returned by `main`, never passed to sys.exit)."""
    root, prompts = pair_dirs
    out = subprocess.run([sys.executable, "-m", "speculoos_hf.bench", "--target", str(root / "target"), "--draft",
                          str(root / "draft"), "--prompts", str(prompts), "--dtype", "float32", "--raw", "--quiet",
                          "--out", str(tmp_path), "--profile", "--profile-m", "1", "2", "--profile-batch-sizes", "1",
                          "--profile-repeats", "1", "--profile-acceptance-tokens", "0"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "profile.json").exists()
    script = entry_points(group="console_scripts", name="speculoos-bench")
    for ep in script:
        assert ep.load()(["--target", str(root / "target"), "--draft", str(root / "draft"),
                          "--prompts", str(prompts), "--dtype", "float32", "--raw", "--quiet", "--out",
                          str(tmp_path / "script"), "--profile", "--profile-m", "1", "--profile-batch-sizes", "1",
                          "--profile-repeats", "1", "--profile-acceptance-tokens", "0"]) in (0, None)


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


# ---------------------------------------------------------------- --profile (issue 19.4)


def test_profile_measures_passes_and_writes_plot_and_json(pair_dirs, tmp_path):
    root, prompts = pair_dirs
    png = tmp_path / "plots" / "machine.png"
    result = _bench(root, prompts, tmp_path, "--profile", "--profile-m", "1", "2", "3", "4", "6",
                    "--profile-batch-sizes", "1", "2", "--profile-max-tokens", "8", "--profile-repeats", "3",
                    "--profile-acceptance-tokens", "8", "--profile-png", str(png))
    assert png.stat().st_size > 1000 and json.loads(png.with_suffix(".json").read_text())["acceptance"] == \
        pytest.approx(result["acceptance"])
    assert result["acceptance_source"].startswith("measured") and 0.0 <= result["acceptance"] <= 1.0
    assert "cores" in result["machine"] and torch.__version__ in result["machine"] and "float32" in result["machine"]
    assert result["command"].startswith("speculoos-bench ") and "--profile" in result["command"] and result["date"]
    assert result["machine_info"]["torch"] == torch.__version__ and result["machine_info"]["cpu_count"] > 0
    by_batch = {b["batch_size"]: b for b in result["batches"]}
    assert list(by_batch[1]["target_pass_s"]) == [1, 2, 3, 4, 6] and list(by_batch[2]["target_pass_s"]) == [1, 2, 3, 4]
    for b in result["batches"]:
        assert b["cost_ratio"][1] == 1.0 and all(t > 0 for t in b["target_pass_s"].values()) and b["draft_step_s"] > 0
        assert list(b["speedup_by_k"]) == list(range(1, max(b["target_pass_s"])))  # K + 1 within the measured m
        best = max(b["speedup_by_k"], key=b["speedup_by_k"].get)
        assert b["best_k"] == (best if b["speedup_by_k"][best] >= 1.0 else 0)
        assert b["break_even_k"] == max([k for k, s in b["speedup_by_k"].items() if s >= 1.0], default=0)
        assert 0 <= b["cost_model_k"] <= 12


def test_breakeven_on_synthetic_profiles():
    """A flat pass (a memory-bound CPU with fast bf16) pays for long drafts; a pass whose every token costs compute
    (bf16 on an AVX2-only CPU: 80 + 155 m ms) pays for none, and the cost model agrees in both cases."""
    from speculoos_hf.bench import breakeven

    flat = {m: 0.120 + 0.002 * m for m in (1, 2, 3, 4, 6, 8, 12, 16)}
    v = breakeven.verdict(1, flat, draft_s=0.012, alpha=0.9, prefill=(0.2, 100))
    assert v.best_k >= 4 and v.best_speedup > 2.5 and v.break_even_k >= v.best_k and v.cost_model_k >= 3
    assert v.cost_ratio[16] == pytest.approx((0.120 + 0.032) / 0.122)
    compute = {m: 0.080 + 0.155 * m for m in (1, 2, 3, 4, 5, 8)}
    v = breakeven.verdict(1, compute, draft_s=0.0875, alpha=0.9, prefill=(0.155 * 50, 50))
    assert v.best_k == 0 and v.break_even_k == 0 and v.cost_model_k == 0
    assert all(s < 1.0 for s in v.speedup_by_k.values()) and set(v.alpha_needed_by_k.values()) == {None}
    step = {m: 0.4 if m == 1 else 0.8 + 0.01 * m for m in (1, 2, 3, 4, 6, 8, 12, 16)}  # float32 on AVX2: T(2) = 2 T(1)
    v = breakeven.verdict(1, step, draft_s=0.2, alpha=0.92, prefill=(1.6, 47))
    assert v.cost_model_k == v.best_k > 0 and v.cost_model_speedup == pytest.approx(v.best_speedup, rel=0.01)
    assert breakeven.pass_time(compute, 6) == pytest.approx(0.080 + 0.155 * 6)  # interpolated
    assert breakeven.pass_time(compute, 9) is None
    for k in (1, 3, 6):
        a = breakeven.alpha_needed(k, flat, 0.012)
        assert 0 < a < 1 and breakeven.predicted_speedup(a, k, flat, 0.012) == pytest.approx(1.0, abs=1e-6)


def test_profile_options_validated_and_acceptance_sources(tmp_path):
    from speculoos_hf.bench.pass_profile import DEFAULT_ACCEPTANCE, ProfileOptions, draft_acceptance

    options = ProfileOptions(m_values=(2, 4, 8, 32), batch_sizes=(1, 4), max_tokens=16, png=tmp_path / "p.png")
    assert options.m_for(1) == [1, 2, 4, 8] and options.m_for(4) == [1, 2, 4]
    assert options.json_path == tmp_path / "p.json"
    for bad in (dict(m_values=(0, 2)), dict(acceptance=1.5), dict(batch_sizes=(8,), max_tokens=8),
                dict(repeats=0)):
        with pytest.raises(ValueError):
            ProfileOptions(**bad)
    assert draft_acceptance(None, None, None, ProfileOptions(acceptance=0.42)) == (0.42, "given (--acceptance)")
    assert draft_acceptance(None, None, None, ProfileOptions(acceptance_tokens=0))[0] == DEFAULT_ACCEPTANCE


def test_machine_name_says_what_the_machine_is():
    from speculoos_hf.bench.machine import CPU_FEATURES, cpu_flags, machine_name

    name = machine_name("bfloat16", "float32")
    assert "cores" in name and f"torch {torch.__version__}" in name and "target bfloat16, draft float32" in name
    assert set(cpu_flags()) <= set(CPU_FEATURES)
    assert ("AVX512_BF16" in name or "AMX_BF16" in name) == bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


# ---------------------------------------------------------------- --table (issue 19.5)


def test_table_preset_under_explicit_flags():
    args = bench.parse_args(["--table"])
    assert args.k == [3, 4, 6] and args.assisted_k == [3, 4, 6] and args.plain and args.batch_sizes == [4]
    assert args.batch_k == "best" and args.modes == ["greedy", "sample"] and args.temperature == 0.7
    args = bench.parse_args(["--table", "--k", "2", "--modes", "greedy", "--batch-sizes", "2", "8"])
    assert args.k == [2] and args.modes == ["greedy"] and args.batch_sizes == [2, 8] and args.assisted_k == [3, 4, 6]
    assert bench.parse_args([]).k == [2, 3, 4, 5, 6] and not bench.parse_args([]).plain
    with pytest.raises(SystemExit, match="best"):  # refused before any model loads
        bench.run(bench.parse_args(["--table", "--k", "--target", "/nonexistent", "--draft", "/nonexistent"]))


def test_table_in_one_run(pair_dirs, tmp_path):
    """--table: target alone, assisted defaults and best fixed K, plain call and best hand-set, both modes, batch 1
    and batched; a float32 target with a bf16 draft stays exact."""
    root, prompts = pair_dirs
    result = _bench(root, prompts, tmp_path, "--table", "--k", "1", "2", "--assisted-k", "1", "2", "--num-prompts",
                    "2", "--batch-sizes", "2", "--batch-max-new-tokens", "6", "--draft-dtype", "bfloat16")
    assert result["draft_dtype"] == "bfloat16" and result["dtype"] == "float32"
    rows = {r["method"]: r for r in result["results"]}
    for mode in ("greedy", "sample"):
        table = [e for e in result["comparison"] if e["mode"] == mode]
        one = {e["label"]: e for e in table if e["batch_size"] == 1}
        assert list(one) == ["target alone", "assisted, defaults", "assisted, best fixed K", "speculoos, plain call",
                             "speculoos, best hand-set"]
        assert one["speculoos, plain call"]["method"] == f"speculoos {mode} plain"
        assisted_k = [rows[f"assisted {mode} K={k}"] for k in (1, 2)]
        assert one["assisted, best fixed K"]["method"] == max(assisted_k, key=lambda r: r["tokens_per_s"])["method"]
        hand = [rows[f"speculoos {mode} K={k}"] for k in (1, 2)]
        best = max(hand, key=lambda r: r["tokens_per_s"])["method"]
        assert one["speculoos, best hand-set"]["method"] == best
        for e in one.values():
            assert e["vs_target"] == pytest.approx(e["tokens_per_s"] / one["target alone"]["tokens_per_s"])
            assert e["vs_assisted_defaults"] == pytest.approx(
                e["tokens_per_s"] / one["assisted, defaults"]["tokens_per_s"])
        batched = [e for e in table if e["batch_size"] == 2]
        assert [e["method"] for e in batched] == [f"target {mode}", f"speculoos {mode} plain", best]
        if mode == "greedy":
            assert rows["speculoos greedy plain"]["greedy_matches_target"] == 2  # bf16 draft, float32 target: exact
    assert "machine:" in (tmp_path / "bench.md").read_text() and "cores" in result["machine"]["name"]


# ---------------------------------------------------------------- edit and repeat classes (issue 18.6)


def test_edit_and_repeat_prompt_sets_shipped():
    edit = select_prompts(None, "edit", None)
    assert len(edit) >= 6 and all("```" in p.text for p in edit) and {p.cls for p in edit} == {"edit"}
    repeat = select_prompts(None, "repeat", None)
    groups = list(dict.fromkeys(p.group for p in repeat))
    assert len(groups) >= 3 and None not in groups
    for g in groups:
        mine = [p.cls for p in repeat if p.group == g]
        assert len(mine) >= 2 and mine == ["repeat"] + ["repeat later"] * (len(mine) - 1)
    two = select_prompts(None, "repeat", 2)  # --num-prompts counts groups of a grouped class
    assert {p.group for p in two} == set(groups[:2]) and len(two) == sum(p.group in groups[:2] for p in repeat)


def test_cache_book_one_cache_per_method_and_group():
    from speculoos_hf.bench.prompts import Prompt
    from speculoos_hf.bench.suffix import CacheBook

    made = []
    book = CacheBook(lambda: made.append(object()) or made[-1])
    cached, other = bench_methods.cached_lookup("greedy", 4), bench_methods.cached_lookup("sample", 4)
    a1, a2, b1 = Prompt("repeat", "x", "a"), Prompt("repeat later", "y", "a"), Prompt("repeat", "z", "b")
    assert book.cache_for(cached, a1) is book.cache_for(cached, a2) is made[0]
    assert book.cache_for(cached, b1) is made[1] and book.cache_for(other, a1) is made[2]
    assert book.scratch(cached) is made[3] and book.cache_for(cached, a1) is made[0]
    plain_lookup = bench_methods.prompt_lookup("greedy", 4)
    assert book.cache_for(plain_lookup, a1) is None and book.scratch(plain_lookup) is None and len(made) == 4
    with pytest.raises(ValueError, match="cache"):
        bench_methods.generate(cached, None, None, torch.tensor([[1]]), None)


def test_suffix_cache_methods_are_data():
    args = bench.parser().parse_args(["--prompt-lookup", "8", "--suffix-cache", "--plain", "--no-assisted",
                                      "--modes", "greedy", "--k", "3", "--method", "hc",
                                      '{"prompt_lookup_num_tokens": 4, "suffix_cache": true}'])
    by_name = {m.name: m for m in bench_methods.build_methods(args)}
    cached = by_name["speculoos greedy lookup N=8 + cache"]
    assert cached.suffix_cache and not cached.draft and cached.kwargs == {"prompt_lookup_num_tokens": 8}
    assert cached.drafter == "lookup" and bench_methods.is_hand_set(cached)
    custom = by_name["speculoos greedy hc"]
    assert custom.suffix_cache and custom.draft and custom.kwargs == {"prompt_lookup_num_tokens": 4}
    plain = by_name["speculoos greedy plain"]
    assert plain.kwargs == {} and plain.draft and not bench_methods.is_hand_set(plain)
    assert bench_methods.cached_lookup("greedy", None).kwargs == {}  # suffix_cache= alone: the engine's default N
    best = by_name["speculoos greedy K=3"]
    args.batch_k = "best"
    assert [m.name for m in bench_methods.batch_methods(args, "greedy", best)] == [
        "speculoos greedy plain", "speculoos greedy K=3", "speculoos greedy lookup N=8"]
    with pytest.raises(ValueError, match="best"):
        bench_methods.batch_methods(args, "greedy", None)


def _suffix_cache_in_engine() -> bool:
    """Whether generate(suffix_cache=...) adds the call's rows to the cache (issue 18's SuffixCache)."""
    try:
        from speculoos_hf import SuffixCache

        cache = SuffixCache()
        enable_speculative(tiny_model()).generate(torch.tensor([[1, 2, 3, 1, 2]]), prompt_lookup_num_tokens=2,
                                                  suffix_cache=cache, max_new_tokens=2, do_sample=False)
        return len(cache) == 1
    except Exception:
        return False


@pytest.mark.skipif(not _suffix_cache_in_engine(), reason="generate(suffix_cache=...) not in the engine yet")
def test_repeat_class_runs_each_group_through_one_cache(pair_dirs, tmp_path):
    root, _ = pair_dirs
    prompts = tmp_path / "repeat.json"
    first, again = "w05 w06 w07 w08 w09 w10", "w05 w06 w07 w08 w09 w11"
    items = [("a", first), ("a", again), ("a", first), ("b", "w30 w31 w32"), ("b", "w30 w31 w33")]
    prompts.write_text(json.dumps([{"kind": "repeat", "group": g, "text": t} for g, t in items]))
    with on_flat_machine():  # the cost model paces the copies: on a busy machine's wall clock it may copy nothing
        result = _bench(root, prompts, tmp_path, "--prompt-class", "repeat", "--no-assisted", "--k", "2", "--modes",
                        "greedy", "--prompt-lookup", "4", "--suffix-cache")
    assert result["prompt_classes"] == ["repeat", "repeat later"]
    rows = {(r["prompt_class"], r["method"]): r for r in result["results"]}
    for cls, n in (("repeat", 2), ("repeat later", 3)):
        cached = rows[(cls, "speculoos greedy lookup N=4 + cache")]
        assert cached["suffix_cache"] and cached["greedy_matches_target"] == n and cached["new_tokens"] == n * 12
        assert cached["speedup_vs_transformers_lookup"] > 0
    later = rows[("repeat later", "speculoos greedy lookup N=4 + cache")]
    alone = rows[("repeat later", "speculoos greedy lookup N=4")]
    assert later["tokens_per_target_forward"] > alone["tokens_per_target_forward"]  # the third request is the first
