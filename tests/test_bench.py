"""speculoos-bench end to end on tiny local models: every method runs, figures are consistent, files are written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import perturbed_copy, tiny_llama, tiny_tokenizer
from speculoos_hf import bench


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    target = tiny_llama(vocab_size=64, seed=0)
    draft = perturbed_copy(target, noise=0.05)
    tok = tiny_tokenizer()
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps([{"kind": "code", "text": "w01 w02 w03 w04"}, {"kind": "code", "text": "w10 w11"}]))
    return root, prompts


def test_bench_reports_every_method(pair_dirs, tmp_path, capsys):
    root, prompts = pair_dirs
    result = bench.main([
        "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompts", str(prompts),
        "--k", "1", "3", "--max-new-tokens", "12", "--dtype", "float32", "--raw", "--out", str(tmp_path), "--quiet",
        "--batch-sizes", "1", "3", "--batch-repeats", "2", "--adaptive", "0.5", "--adaptive-k", "4",
    ])
    names = [r["method"] for r in result["results"]]
    for mode in ("greedy", "sample"):
        assert f"target {mode}" in names
        assert f"assisted {mode} (defaults)" in names and f"assisted {mode} K=3" in names
        assert f"speculoos {mode} K=1" in names and f"speculoos {mode} K=3" in names
        assert f"speculoos {mode} K<=4 conf 0.5" in names
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


def test_theoretical_speedup_formula():
    assert bench.theoretical_speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)
    assert bench.theoretical_speedup(1.0, 4, 0.0) == pytest.approx(5.0)
    assert bench.theoretical_speedup(0.5, 2, 0.25) == pytest.approx((1 - 0.5**3) / 0.5 / 1.5)


def test_cli_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "speculoos_hf.bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--target" in out.stdout and "--k" in out.stdout
