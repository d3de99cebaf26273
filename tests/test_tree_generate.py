"""Token trees through generate(): greedy output equal to the target's own generate() token for token (float32),
at batch 1 and in left-padded batches, with trees from the draft model, from prompt lookup and from both (the
hybrid), in every architecture trees are offered on; the chain kept where trees cannot apply."""

from __future__ import annotations

import pytest
import torch

from conftest import left_pad_batch, make_prompt, tiny_model, tiny_pair
from speculoos_hf import enable_speculative
from speculoos_hf.trees.tree_planner import best_tree

DRAFTERS = {
    "model": lambda d: dict(draft_model=d, num_draft_tokens=4, draft_tree=(3, 2, 1, 1)),
    "lookup": lambda d: dict(prompt_lookup_num_tokens=6, draft_tree=(2, 2, 1, 1, 1, 1)),
    "hybrid": lambda d: dict(draft_model=d, prompt_lookup_num_tokens=6, num_draft_tokens=5, draft_tree=(2, 2, 1, 1, 1)),
    "model_shape": lambda d: dict(draft_model=d, num_draft_tokens=4,
                                  draft_tree=best_tree([0.8] * 4, lambda r: 0.4, nodes=10, depth=4)[0]),
    "model_auto": lambda d: dict(draft_model=d),  # the plain call: trees where the cost model says they pay
    "lookup_auto": lambda d: dict(prompt_lookup_num_tokens=6),
    "hybrid_auto": lambda d: dict(draft_model=d, prompt_lookup_num_tokens=6),
}


def _repetitive(n: int, seed: int) -> torch.Tensor:
    """A prompt that repeats itself (lookup finds matches with several continuations)."""
    base = make_prompt(5, seed=seed)[0]
    return torch.cat([base, base[:3], base[1:], base[:2]])[:n]


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def arch_pair(request):
    return tiny_pair(request.param)


@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_greedy_trees_equal_the_target(arch_pair, drafter):
    target, draft = arch_pair
    prompts = [_repetitive(12, 1), make_prompt(3, seed=2)[0], _repetitive(9, 3)]
    ids, mask = left_pad_batch(prompts)
    kw = DRAFTERS[drafter](draft)
    for batch in (ids[:1, -12:], ids):  # batch 1 (no padding), then the left-padded batch
        m = mask[: len(batch), -batch.shape[1]:]
        ref = target.generate(batch, attention_mask=m, do_sample=False, max_new_tokens=20)
        out = target.generate(batch, attention_mask=m, do_sample=False, max_new_tokens=20, **kw)
        assert torch.equal(out, ref), f"{drafter}: {out.tolist()} != {ref.tolist()}"
    if not drafter.endswith("auto"):  # under "auto" the cost model may find that drafting does not pay here
        assert target.speculative_stats.draft_tokens_accepted > 0


def test_trees_take_fewer_passes_than_the_chain():
    """Same draft forwards (depth 4): the tree's runner-ups save target passes."""
    target, draft = tiny_pair("llama", noise=0.15)
    ids = make_prompt(6, seed=5, batch=4)
    passes = {}
    for name, tree in (("chain", False), ("tree", (3, 2, 1, 1))):
        out = target.generate(ids, do_sample=False, max_new_tokens=40, draft_model=draft, num_draft_tokens=4,
                              draft_tree=tree)
        passes[name] = target.speculative_stats.target_forward_passes
    assert passes["tree"] < passes["chain"], passes


def test_chain_kept_where_the_mask_cannot_reach():
    """A sliding-window target counts slots: trees are not offered, the chain runs and output stays exact."""
    from test_architectures import tiny_arch

    target = enable_speculative(tiny_arch("mistral", window=4))
    draft = tiny_arch("mistral", window=4, seed=1)
    ids = make_prompt(6, seed=6)
    ref = target.generate(ids, do_sample=False, max_new_tokens=12)
    out = target.generate(ids, do_sample=False, max_new_tokens=12, draft_model=draft, num_draft_tokens=3,
                          draft_tree=(2, 1, 1))
    assert torch.equal(out, ref)


def test_draft_tree_refused_when_malformed():
    target, draft = tiny_pair("llama")
    with pytest.raises(ValueError, match="draft_tree"):
        target.generate(make_prompt(4), max_new_tokens=4, draft_model=draft, draft_tree=(2, 0))


def test_greedy_trees_from_the_suffix_cache():
    """A second similar request: the cache's continuations as trees, output as the target's own."""
    from speculoos_hf import SuffixCache

    target, draft = tiny_pair("llama")
    cache = SuffixCache()
    ids = make_prompt(8, seed=7)
    ref = target.generate(ids, do_sample=False, max_new_tokens=24)
    for _ in range(2):
        out = target.generate(ids, do_sample=False, max_new_tokens=24, suffix_cache=cache, draft_tree=(2, 2, 1, 1))
        assert torch.equal(out, ref)
    assert target.speculative_stats.draft_tokens_accepted >= 12  # the second call copies from the first


@pytest.mark.parametrize("drafter", ["model", "hybrid"])
def test_greedy_trees_with_an_all_padding_row_and_eos(drafter):
    """A row that is all padding (stock numbers its tokens from 1) and rows that stop on EOS at different rounds."""
    target, draft = tiny_pair("llama")
    ids, mask = left_pad_batch([make_prompt(5, seed=1)[0], torch.zeros(0, dtype=torch.long), make_prompt(3, seed=2)[0]])
    free = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16)
    eos = int(free[0, ids.shape[1] + 3])
    for extra in ({}, dict(eos_token_id=eos)):
        ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16, **extra)
        out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16, **DRAFTERS[drafter](draft),
                              **extra)
        assert torch.equal(out, ref), f"{extra}: {out.tolist()} != {ref.tolist()}"


def _machine(per_token: float) -> "MachineProfile":
    """A simulated machine whose pass over m tokens costs 1 + per_token * (m - 1) one-token passes (0.2 s)."""
    from speculoos_hf.pacing.simulated_machine import MachineProfile

    widths = (1, 2, 4, 8, 16, 32, 64)
    return MachineProfile("synthetic", {1: {m: 0.2 * (1 + per_token * (m - 1)) for m in widths}}, {1: 0.02}, 0.01)


@pytest.mark.parametrize("per_token", [0.005, 0.15], ids=["flat", "steep"])
def test_plain_call_trees_where_they_pay(per_token):
    """The plain call (draft_tree "auto") on a simulated machine whose wide passes cost what a narrow one does (flat)
    or 15% of a pass more per token (steep: drafting pays, runner-ups hardly): over six prompts its simulated time
    is below the chains' (draft_tree=False) on the flat machine and within 3% of it on the steep one (one prompt's
    40 tokens vary by 10% either way there: a round more or less), it drafts trees on the flat machine, and the
    output is the target's either way."""
    from speculoos_hf.pacing.simulated_machine import ForwardPricer, simulated_machine

    target, draft = tiny_pair("llama", noise=0.05)
    seconds, trees = {"auto": 0.0, "chains": 0.0}, {"auto": 0, "chains": 0}
    for seed in range(1, 7):
        ids = make_prompt(6, seed=seed)
        ref = target.generate(ids, do_sample=False, max_new_tokens=40)
        for name, tree in (("auto", "auto"), ("chains", False)):
            machine = _machine(per_token)
            with simulated_machine(machine), ForwardPricer(machine, target, [draft]) as pricer:
                out = target.generate(ids, do_sample=False, max_new_tokens=40, draft_model=draft, draft_tree=tree)
            assert torch.equal(out, ref)
            seconds[name] += pricer.seconds
            trees[name] += sum(r.tree for r in target.speculative_stats.trace)
    assert seconds["auto"] <= (1.0 if per_token < 0.1 else 1.03) * seconds["chains"], seconds
    assert trees["chains"] == 0 and (trees["auto"] > 30 if per_token < 0.1 else True), trees


def test_trees_kept_where_the_chains_first_candidates_do_not_pay():
    """Flat Xeon profile, two rows, a partial draft: early tree rounds accept runner-ups (first candidates 3 of 5).
    Drafting goes on once begun (the rows' acceptance leans on the positions' estimate, so a poor round cannot
    switch it off), trees are drafted where they pay, never slower than the chains, output the target's. Each call
    starts from the priors (nothing carried between them)."""
    from pathlib import Path

    from speculoos_hf.pacing.memory import forget_pacing
    from speculoos_hf.pacing.simulated_machine import ForwardPricer, MachineProfile, simulated_machine

    profile = MachineProfile.load(Path(__file__).parents[1] / "benchmarks/xeon-amx-bf16/xeon_amx_bf16.json")
    target, draft = tiny_pair("llama", noise=0.03)
    ids = make_prompt(6, seed=1, batch=2)
    ref = target.generate(ids, do_sample=False, max_new_tokens=48)
    seconds, trees, plain = {}, {}, {}
    for name, tree in (("auto", "auto"), ("chains", False)):
        forget_pacing()
        with simulated_machine(profile), ForwardPricer(profile, target, [draft]) as pricer:
            out = target.generate(ids, do_sample=False, max_new_tokens=48, draft_model=draft, draft_tree=tree)
        assert torch.equal(out, ref)
        trace = target.speculative_stats.trace
        seconds[name], trees[name] = pricer.seconds, sum(r.tree for r in trace)
        plain[name] = sum(r.width == 1 for r in trace[2:-1])  # after the first two rounds, before the last
    assert seconds["auto"] <= seconds["chains"], seconds
    assert trees["auto"] > 0 and plain["auto"] == 0, (trees, plain)


def test_hybrid_trees_tell_the_cost_model_of_the_models_own_chain(monkeypatch):
    """A hybrid's tree tries the copies first at the root: the cost model's acceptance (the model's drafts) hears
    the model's own first candidates, not the copies' chain, and nothing from rows whose path took a copy. With a
    draft equal to the target, every model draft it hears of is accepted."""
    from speculoos_hf.pacing.lookahead import CostModelLookahead

    heard = []
    observe = CostModelLookahead.observe_round

    def spy(self, proposed, accepted, rows=None):
        heard.append((list(proposed), list(accepted)))
        return observe(self, proposed, accepted, rows)

    monkeypatch.setattr(CostModelLookahead, "observe_round", spy)
    target, draft = tiny_pair("llama", noise=0.0)
    for seed in (0, 1):
        ids = _repetitive(14, seed)[None]
        out = target.generate(ids, do_sample=False, max_new_tokens=30, draft_model=draft, prompt_lookup_num_tokens=6,
                              draft_tree=(2, 2, 1, 1))
        assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=30))
    rounds = [(p, a) for p, a in heard[:-1] if sum(p)]
    assert rounds and all(p == a for p, a in rounds), rounds
