"""Timing: every method on every prompt, alternated prompt by prompt so that machine drift cancels, with wall
clock, forward passes and speculative counters summed per (method, prompt class)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .clock import WallClock
from .methods import Method, generate


class ForwardCounter:
    """Counts forward calls of a model (transformers' assisted generation does not report its own)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


@dataclass
class Tally:
    """One method's sums over the prompts of one class."""

    seconds: float = 0.0
    new_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    proposed: int = 0
    accepted: int = 0
    reached: int = 0  # draft positions evaluated up to the first rejection (for the Leviathan alpha)
    rounds: int = 0
    rows_rounds: int = 0  # rounds summed over rows (= rounds at batch size 1)
    outputs: list = field(default_factory=list)  # generated ids per prompt (prompt included)
    traces: list = field(default_factory=list)  # per speculoos call, its round trace (trace.RoundRecord dicts)

    def add_stats(self, s) -> None:
        self.proposed += s.draft_tokens_proposed
        self.accepted += s.draft_tokens_accepted
        self.reached += sum(s.proposed_at_position)
        self.rounds += s.target_forward_passes
        self.rows_rounds += sum(r.target_forward_passes for r in s.per_row)


def timed(method: Method, target, draft, ids, mask, gen_kwargs, draft_config, tally: Tally | None = None,
          suffix_cache=None, clock=None):
    """One timed generation of `method` on one prompt, added to `tally` when given; returns the sequences.
    `clock`: what its seconds are (bench/clock.py; default the wall clock)."""
    clock = clock or WallClock()
    with ForwardCounter(target) as t_count, ForwardCounter(draft) as d_count, clock.timing(target, draft) as span:
        out, stats = generate(method, target, draft, ids, draft_config, suffix_cache=suffix_cache,
                              attention_mask=mask, **gen_kwargs)
    if tally is not None:
        tally.seconds += span.seconds
        tally.new_tokens += out.shape[1] - ids.shape[1]
        tally.target_forwards += t_count.calls
        tally.draft_forwards += d_count.calls
        if stats is not None:
            tally.add_stats(stats)
            tally.traces.append([r.to_dict() for r in stats.trace])
        tally.outputs.append(out[0].tolist())
    return out


WARM_UP_PROMPT = 16  # tokens of the first prompt the warm-up calls read (a long prefill would only cost time)


@torch.inference_mode()
def alternate(methods, prompts, encoded, target, draft, gen_kwargs, draft_config, seed=0, quiet=False,
              after_prompt=None, caches=None, clock=None) -> dict:
    """Every method on every prompt, in forward order on even prompts and reverse order on odd ones, each call
    from the same seed for a given prompt. Returns {(method name, prompt class): Tally}; `after_prompt(tallies,
    done)` is called after each prompt (a long run then leaves partial results if it is stopped); `caches`: the
    `CacheBook` of suffix-cache methods (each sees its own group's earlier requests, whatever the method order);
    `clock`: what the calls' seconds are (bench/clock.py: the wall clock, or a profile with --simulate)."""
    from tqdm.auto import tqdm

    ids0, mask0 = (x[:, -WARM_UP_PROMPT:] for x in encoded[0])
    for m in methods:  # warm-up: first calls pay one-off costs
        timed(m, target, draft, ids0, mask0, dict(gen_kwargs, max_new_tokens=4, min_new_tokens=None), draft_config,
              suffix_cache=caches.scratch(m) if caches else None)
    tallies = {(m.name, p.cls): Tally() for m in methods for p in prompts}
    bar = tqdm(total=len(prompts) * len(methods), desc="speculoos-bench", disable=quiet)
    for i, (prompt, (ids, mask)) in enumerate(zip(prompts, encoded)):
        for m in methods if i % 2 == 0 else methods[::-1]:
            bar.set_postfix_str(f"{prompt.cls}: {m.name}")
            torch.manual_seed(seed + i)
            timed(m, target, draft, ids, mask, gen_kwargs, draft_config, tallies[(m.name, prompt.cls)],
                  suffix_cache=caches.cache_for(m, prompt) if caches else None, clock=clock)
            bar.update()
        if after_prompt is not None:
            after_prompt(tallies, i + 1)
    bar.close()
    return tallies
