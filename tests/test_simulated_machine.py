"""A machine you can simulate (issue 27.1): the cost model times with a profile's pass times instead of the clock,
the models run for real (real tokens), and every forward is priced from the profile (simulated time). Tiny models,
deterministic: the cost model's choices are pinned on a flat-pass profile (Intel Xeon with AMX, bf16) and on the
README's float32 AVX2 one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FLAT_PROFILE, left_pad_batch, make_prompt, tiny_pair
from speculoos_hf.bench.methods import stock_generate
from speculoos_hf.pacing.memory import forget_pacing
from speculoos_hf.pacing.simulated_machine import ForwardPricer, MachineProfile, SimulatedStopwatch, simulated_machine
from speculoos_hf.pacing.timing import Work, using_stopwatch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FLAT = FLAT_PROFILE
AVX2_FP32 = BENCHMARKS / "epyc-avx2" / "profile_avx2_fp32.json"  # T(2) = 2 T(1), then nearly flat


def simulated(profile: MachineProfile, target, draft, ids, mask=None, new_tokens=96, watch=None):
    """(speedup of the plain call over the target's own generate(), both priced by the profile; the plain call's
    stats). Greedy; the outputs are checked equal."""
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, attention_mask=mask)
    with ForwardPricer(profile, target) as alone:
        ref = stock_generate(target)(ids, **kwargs)
    with using_stopwatch(watch or SimulatedStopwatch(profile)), ForwardPricer(profile, target, [draft]) as spec:
        out = target.generate(ids, draft_model=draft, **kwargs)
    assert torch.equal(out, ref)
    return alone.seconds / spec.seconds, target.speculative_stats


def drafted_ks(stats) -> list[int]:
    """Per round, the tokens per row the target scored besides its own (a chain's drafts, a tree's nodes)."""
    return [r.width - 1 for r in stats.trace]


def test_profile_prices_by_shape():
    p = MachineProfile.load(AVX2_FP32)
    one = p.target[1]
    assert p.target_pass(1, 1) == pytest.approx(one[1]) and p.target_pass(1, 8) == pytest.approx(one[8])
    assert p.target_pass(1, 10) == pytest.approx((one[8] + one[12]) / 2)  # between timed widths: interpolated
    assert p.target_pass(1, 200) == pytest.approx(max(one[16], p.prefill_per_token * 200))  # past them: prefill rate
    assert min(p.target_pass(1, 4), p.target_pass(4, 4)) <= p.target_pass(2, 4) <= max(p.target_pass(1, 4),
                                                                                        p.target_pass(4, 4))
    assert p.draft_forward(1, 1) == pytest.approx(p.draft[1])
    assert p.draft_forward(1, 8) == pytest.approx(p.draft[1] * one[8] / one[1])
    watch = SimulatedStopwatch(p)
    assert watch.seconds(watch.stop(watch.start()), Work("target", 1, 3)) == pytest.approx(one[3])
    assert watch.seconds(None, Work("draft", 1, 3, catch_up=8)) == pytest.approx(p.draft_forward(1, 8) + 2 * p.draft[1])
    assert watch.reported(123.0, Work("catch_up", 1, 8)) == pytest.approx(p.draft_forward(1, 8))


def test_the_forward_pricer_counts_every_forward():
    target, draft = tiny_pair("llama")
    p = MachineProfile.load(FLAT)
    ids = make_prompt(10, seed=1)
    with ForwardPricer(p, target, [draft]) as priced:
        stock_generate(target)(ids, do_sample=False, max_new_tokens=5)
    assert priced.forwards == {"target": 5, "draft": 0}
    assert priced.seconds == pytest.approx(p.target_pass(1, 10) + 4 * p.target_pass(1, 1))


def test_flat_profile_a_good_draft_drafts_long_and_pays():
    """A draft that is always right on the flat Xeon profile (int8 draft step 0.24 of a pass): k climbs past the
    profile's best fixed chain for alpha 0.92 (K=6), and the plain call runs above 2x the target alone."""
    target, draft = tiny_pair("llama", noise=0.0)
    speedup, stats = simulated(MachineProfile.load(FLAT), target, draft, make_prompt(12, seed=3))
    ks = drafted_ks(stats)
    assert ks[0] == 0 and max(ks) >= 10  # a plain step first, then long rounds
    assert speedup > 2.0, speedup


def test_flat_profile_same_decisions_every_run():
    """The simulated clock makes the cost model's choices a function of the tokens alone."""
    target, draft = tiny_pair("llama", noise=0.05)
    ids = make_prompt(12, seed=4)
    runs = []
    for _ in range(2):
        forget_pacing()  # each run from the priors (a later call would start from what the first measured)
        runs.append(drafted_ks(simulated(MachineProfile.load(FLAT), target, draft, ids, new_tokens=48)[1]))
    assert runs[0] == runs[1] and sum(runs[0]) > 0


@pytest.mark.parametrize("noise", [0.0, 0.05, 0.3], ids=["always-right", "partial", "useless"])
def test_avx2_float32_profile_plain_call_never_below_095(noise):
    """The README's float32 AVX2 shape (T(2) = 2 T(1)): whatever the draft, the plain call stays at 0.95x the
    target alone or better over 128 tokens, drafting at most a short first round and rare probes."""
    target, draft = tiny_pair("llama", noise=noise)
    speedup, stats = simulated(MachineProfile.load(AVX2_FP32), target, draft, make_prompt(12, seed=3), new_tokens=128)
    assert speedup >= 0.95, speedup
    assert sum(k > 0 for k in drafted_ks(stats)) <= 4


class Hiccups(SimulatedStopwatch):
    """The profile's times, but every `every`-th timing the cost model reads is `factor` times too slow."""

    def __init__(self, profile, phase: int, every: int = 20, factor: float = 10.0):
        super().__init__(profile)
        self.phase, self.every, self.factor, self.count = phase, every, factor, 0

    def seconds(self, span, work=None):
        self.count += 1
        return super().seconds(span, work) * (self.factor if self.count % self.every == self.phase else 1.0)


@pytest.mark.parametrize("phase", [3, 8, 15])
def test_flat_profile_one_timing_in_twenty_ten_times_too_slow(phase):
    """The real loop on the flat profile with every 20th timing the cost model reads 10x too slow: within 5% of
    the undisturbed simulated speed."""
    target, draft = tiny_pair("llama", noise=0.02)
    p, ids = MachineProfile.load(FLAT), make_prompt(12, seed=3)
    base, _ = simulated(p, target, draft, ids, new_tokens=128)
    skewed, _ = simulated(p, target, draft, ids, new_tokens=128, watch=Hiccups(p, phase))
    assert skewed >= 0.95 * base, (skewed, base)


def test_flat_profile_batch_of_four_drafts_and_pays():
    """Four left-padded rows on the flat profile's batch-4 passes: the plain call drafts and beats the target's own
    batched generate() (at this draft's 75% acceptance; the profile predicts 1.90x at 92%: figures in docs/speed.md)."""
    target, draft = tiny_pair("llama", noise=0.02)
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (12, 9, 14, 11)])
    speedup, stats = simulated(MachineProfile.load(FLAT), target, draft, ids, mask, new_tokens=64)
    assert max(drafted_ks(stats)) >= 4 and speedup > 1.3, speedup


def test_bench_simulate_and_trace(tmp_path):
    """`speculoos-bench --simulate PROFILE --trace`: tok/s from the profile (the same on every run), each speculoos
    call's rounds in trace.jsonl, and the plain call pays on the flat profile."""
    import json

    from conftest import tiny_tokenizer
    from speculoos_hf.bench import cli as bench

    target, draft = tiny_pair("llama", noise=0.0, speculative=False)
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer().save_pretrained(tmp_path / name)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"kind": "code", "text": "w01 w02 w03 w04 w05 w06"}]))
    results = []
    for run in ("a", "b"):
        results.append(bench.main([
            "--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"), "--prompts", str(prompts),
            "--max-new-tokens", "32", "--fixed-length", "--dtype", "float32", "--raw", "--out", str(tmp_path / run),
            "--quiet", "--modes", "greedy", "--k", "4", "--no-assisted", "--plain", "--simulate", str(FLAT),
            "--trace"]))
    by_name = [{r["method"]: r for r in result["results"]} for result in results]
    assert results[0]["clock"].startswith("simulated: ")
    plain = by_name[0]["speculoos greedy plain"]
    assert plain["speedup"] > 1.5 and plain["speedup"] == by_name[1]["speculoos greedy plain"]["speedup"]
    lines = [json.loads(x) for x in (tmp_path / "a" / "trace.jsonl").read_text().splitlines()]
    assert {x["method"] for x in lines} == {"speculoos greedy plain", "speculoos greedy K=4"}
    assert all(x["rounds"] and {"draft_s", "target_s", "width", "accepted"} <= set(x["rounds"][0]) for x in lines)


def test_profile_times_the_draft_as_the_plain_call_prepares_it(tmp_path, monkeypatch, capsys):
    """`--profile` times the draft the plain call drafts with (here its int8 copy, "auto" made to choose it) and
    prints both c's; `--profile-as-given` times the draft as given."""
    import json

    from conftest import tiny_tokenizer
    from speculoos_hf.bench import cli as bench
    from speculoos_hf.drafters import prepared

    monkeypatch.setattr(prepared, "MIN_INT8_BYTES", 1)
    monkeypatch.setattr(prepared, "MIN_DRAFT_SHARE", 0.0)
    target, draft = tiny_pair("llama", speculative=False)
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer().save_pretrained(tmp_path / name)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"kind": "code", "text": "w01 w02 w03 w04"}]))
    common = ["--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"), "--prompts", str(prompts),
              "--dtype", "float32", "--raw", "--profile", "--profile-m", "1", "2", "4", "--profile-batch-sizes", "1",
              "--profile-repeats", "1", "--profile-acceptance-tokens", "4"]
    auto = bench.main(common + ["--out", str(tmp_path / "auto")])
    assert auto["draft_as_profiled"].startswith("as the plain call prepares it")
    assert auto["batches"][0]["c_as_given"] > 0 and "the draft as given: c = " in capsys.readouterr().out
    given = bench.main(common + ["--out", str(tmp_path / "given"), "--profile-as-given", "--quiet"])
    assert given["draft_as_profiled"] == "as given" and "c_as_given" not in given["batches"][0]
