"""Prompt lookup's greedy rounds replayed over a known output, without a model.

With greedy decoding and a fixed number of copied tokens, every round is a function of the output alone: the
matcher copies from the committed tokens, the target accepts the copy's longest prefix that equals its own next
tokens and adds one. So replaying the matcher over the target's greedy output gives exactly the rounds a real call
with `prompt_lookup_num_tokens=N, num_draft_tokens=N` makes (no cost-model cap): tokens per target pass, and each
round's match length, for the notebook's plot and for choosing the matcher's defaults in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from ..drafters.prompt_lookup import PromptLookupDrafter


@dataclass
class ReplayRound:
    """One replayed round: the matched suffix's length (0: no match), tokens copied and accepted, and the round's
    new tokens (accepted + 1, fewer at the end of the output)."""

    match: int
    copied: int
    accepted: int
    new_tokens: int


@dataclass
class Replay:
    """The rounds of one output."""

    rounds: list[ReplayRound] = field(default_factory=list)

    @property
    def tokens_per_pass(self) -> float:
        return sum(r.new_tokens for r in self.rounds) / max(len(self.rounds), 1)

    @property
    def acceptance(self) -> float:
        return sum(r.accepted for r in self.rounds) / max(sum(r.copied for r in self.rounds), 1)


def replay_lookup(prompt: list[int], output: list[int], drafter: PromptLookupDrafter) -> Replay:
    """The greedy rounds `drafter` (prompt lookup, with any cache) makes while the target writes `output` after
    `prompt`; the drafter's cache gets the sequence at the end, as in a real call."""
    full = torch.tensor([list(prompt) + list(output)])  # [1, L]
    state = SimpleNamespace(seq=full, seq_host=full, lengths=[len(prompt)], rows=[0], first_valid=[0],
                            batch_size=1)
    drafter.start(None, state)
    replay, end = Replay(), full.shape[1]
    while state.lengths[0] < end:
        at = state.lengths[0]
        k = min(drafter.num_tokens, end - at - 1)  # as a real call: the round's last token is the target's own
        copies = drafter.copies(state, max(k, 1))
        n = int(copies.counts[0]) if k > 0 else 0
        truth = full[0, at:at + n].numpy()
        accepted = int(np.cumprod(copies.tokens[0, :len(truth)] == truth).sum())
        new = min(accepted + 1, end - at)
        replay.rounds.append(ReplayRound(int(copies.match[0]), n, min(accepted, new), new))
        state.lengths = [at + new]
    if drafter.cache is not None:
        drafter.cache.add_all([full[0].numpy()])
    return replay


def by_match_length(replays: list[Replay], edges: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    """Rounds pooled by matched suffix length, bins [edges[i], edges[i+1]): rounds, tokens per pass, acceptance."""
    rounds = [r for rep in replays for r in rep.rounds]
    bins = []
    for lo, hi in zip(edges, edges[1:] + (10**9,)):
        inside = [r for r in rounds if lo <= r.match < hi]
        if inside:
            bins.append({"match_from": lo, "match_to": hi - 1, "rounds": len(inside),
                         "tokens_per_pass": sum(r.new_tokens for r in inside) / len(inside),
                         "acceptance": sum(r.accepted for r in inside) / max(sum(r.copied for r in inside), 1)})
    return bins
