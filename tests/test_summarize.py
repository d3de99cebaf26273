"""`speculoos-bench --summarize DIR`: the tables of README.md and docs/ are generated from the result JSONs under
benchmarks/ (no figure typed by hand), and every result file records how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speculoos_hf import bench
from speculoos_hf.bench.results import Machine, load_results
from speculoos_hf.bench.summarize import SUMMARY, Tables, generated_pages

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def _comparison_file(vs_target: float) -> dict:
    machine = {"name": "x86_64 Test CPU, 2 cores, AVX2 only", "cpu_model": "Test CPU", "cpu_flags": ["avx2"],
               "cpu_count": 2, "torch": "9.9.9", "cuda_device": None}
    row = dict(mode="greedy", batch_size=1, label="speculoos, plain call", method="speculoos greedy plain",
               tokens_per_s=3.0, vs_target=vs_target, vs_assisted_defaults=1.25, acceptance=0.5,
               tokens_per_target_pass=2.5)
    return {"command": "speculoos-bench --table", "commit": "abc", "date": "2026-01-01", "dtype": "float32",
            "machine": machine, "results": [{"kind": "target", "method": "target greedy"}], "comparison": [row]}


@pytest.fixture
def tree(tmp_path):
    """A repository in miniature: benchmarks/ with one machine folder, a README and a docs page with blocks."""
    bench_dir = tmp_path / "benchmarks"
    (bench_dir / "test-cpu").mkdir(parents=True)
    (bench_dir / "test-cpu" / "run.json").write_text(json.dumps(_comparison_file(1.92)))
    (bench_dir / "headlines.json").write_text(json.dumps({"headlines": [{
        "what": "plain call, batch 1", "file": "test-cpu/run.json",
        "comparison": {"label": "speculoos, plain call", "batch_size": 1}}]}))
    (tmp_path / "README.md").write_text("# Title\n\nhand text 1.00x\n\n<!-- summary: headline -->\nstale 9.99x\n"
                                        "<!-- /summary -->\n\ntail\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("<!-- summary: table test-cpu/run.json -->\n<!-- /summary -->\n")
    return tmp_path


def test_summarize_fills_the_blocks_from_the_json(tree):
    out = bench.main(["--summarize", str(tree / "benchmarks")])
    readme = (tree / "README.md").read_text()
    assert readme.startswith("# Title\n\nhand text 1.00x\n\n<!-- summary: headline -->\n") and readme.endswith(
        "<!-- /summary -->\n\ntail\n")  # text outside the blocks untouched
    assert "9.99x" not in readme and "| plain call, batch 1 | Test CPU, AVX2 only, 2 cores | float32 | 9.9.9 | 1.92x" \
        in readme and "(benchmarks/test-cpu/run.json)" in readme and "**GPU**: not measured yet." in readme
    page = (tree / "docs" / "page.md").read_text()
    assert "(speculoos greedy plain) | 3.00 | 1.92x | 1.25x | 50.0% | 2.50 |" in page
    assert (tree / "benchmarks" / SUMMARY).read_text().count("1.92x") >= 2
    assert (tree / "benchmarks" / "summary.png").stat().st_size > 1000
    assert sorted(Path(p).name for p in out["pages"]) == ["README.md", "page.md"]
    # a figure changes in the JSON: the page follows; nothing changes when nothing did
    (tree / "benchmarks" / "test-cpu" / "run.json").write_text(json.dumps(_comparison_file(2.5)))
    assert bench.main(["--summarize", str(tree / "benchmarks")])["pages"] and "| 2.50x |" in (
        tree / "README.md").read_text()
    assert bench.main(["--summarize", str(tree / "benchmarks")])["pages"] == []


def test_a_block_naming_no_result_file_is_an_error(tree):
    (tree / "docs" / "page.md").write_text("<!-- summary: table test-cpu/missing.json -->\n<!-- /summary -->\n")
    with pytest.raises(ValueError, match="missing.json"):
        bench.main(["--summarize", str(tree / "benchmarks")])


def test_the_repository_tables_are_the_generated_ones():
    """README.md's and docs' tables and benchmarks/SUMMARY.md are what `--summarize benchmarks/` writes from the
    JSON files: a figure typed by hand, or a result file changed without regenerating, fails here."""
    tables = Tables(BENCHMARKS)
    pages = generated_pages(BENCHMARKS, tables)
    assert ROOT / "README.md" in pages, "README.md has no generated headline table"
    stale = [str(p.relative_to(ROOT)) for p, text in pages.items() if p.read_text() != text]
    assert not stale, f"run `speculoos-bench --summarize benchmarks/`: {stale} differ from the result files"
    assert (BENCHMARKS / SUMMARY).read_text() == tables.summary_page(), "benchmarks/SUMMARY.md is stale"


def test_every_result_file_records_how_it_was_made():
    files = load_results(BENCHMARKS)
    assert {f.path.split("/")[0] for f in files} >= {"epyc-avx2", "xeon-amx-bf16"}
    for f in files:
        for key in ("command", "commit", "date", "recorded"):
            assert f.data.get(key), f"{f.path}: no {key}"
        m = Machine.of(f.data)
        assert m.name and m.cores and m.torch and (m.flags or m.gpu), f"{f.path}: machine not named"
    kinds = {f.path.split("/")[0]: f.machine.kind for f in files}
    assert kinds["epyc-avx2"] == "AVX2-only CPU" and kinds["xeon-amx-bf16"] == "flat-pass CPU"
