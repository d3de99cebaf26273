"""Which candidates a sampled tree's nodes take from the draft model: its top b tokens, or b tokens drawn without
replacement from q.

Both are exact under recursive rejection sampling (tree_verify.py). Drawn candidates carry their q_i: where the draft
matches the target closely at a flat distribution, the first one is accepted with chance sum min(p, q), near 1. Top
candidates are deterministic (a one-hot q each): the target's own draw walks the tree, and a node accepts one of
them with chance p's mass on them (SGLang's target-only tree sampling verifies EAGLE's trees so); where p is peaked
and the draft's first choice is often but not always the target's (code at T=0.7 with the reference pair), that
mass beats sum min(p, q) by more than drawn runner-ups recover.

Every tree round measures both at each row's root, whichever was drafted: the top b's mass under p exactly, and the
drawn rule's acceptance for one draw of b candidates from the draft's root q. The next rounds draft with the rule
whose discounted mean is higher (earlier rounds only: exact whatever it picks). The means stay on the device; the
choice reaches the host with the round's stop decision, no sync of its own.
"""

from __future__ import annotations

import torch

FORGET = 0.8  # weight of the earlier rounds' mean in each round's update
MAX_WIDTH = 4  # candidates per node the estimate counts at most


class CandidateRule:
    """The choice between top and drawn candidates for the draft model's sampled trees (module docstring)."""

    def __init__(self):
        self._means: torch.Tensor | None = None  # [2] device: discounted root acceptance, top then drawn
        self._top = torch.zeros((), dtype=torch.bool)  # host copy of the choice (drawn before any measurement)

    @property
    def top(self) -> bool:
        """Draft the top candidates next round (else drawn ones)."""
        return bool(self._top)

    def observe(self, p: torch.Tensor, q: torch.Tensor, width: int) -> None:
        """A tree round's roots: the target's p [B, V] and the draft's q [B, V] there, `width` candidates."""
        b = max(1, min(width, MAX_WIDTH))
        round_means = torch.stack([top_acceptance(p, q, b).mean(), drawn_acceptance(p, q, b).mean()])  # [2]
        self._means = round_means if self._means is None else FORGET * self._means + (1 - FORGET) * round_means
        self._top = (self._means[0] > self._means[1]).to("cpu", non_blocking=True)


def top_acceptance(p: torch.Tensor, q: torch.Tensor, b: int) -> torch.Tensor:
    """[B] the chance that one of q's b likeliest tokens is accepted: p's mass on them."""
    return p.gather(1, q.topk(b, dim=-1).indices).sum(-1)


def drawn_acceptance(p: torch.Tensor, q: torch.Tensor, b: int) -> torch.Tensor:
    """[B] the chance that recursive rejection sampling accepts one of b candidates drawn without replacement from
    q, for one such draw (an unbiased estimate of the rule's acceptance at this node)."""
    race = q / torch.empty_like(q).exponential_()  # [B, V] the exponential race: a draw without replacement
    kids = race.topk(b, dim=-1).indices  # [B, b]
    residual, qi = p / p.sum(-1, keepdim=True), q  # [B, V] each
    missed = torch.ones(p.shape[0], device=p.device)  # [B] every candidate so far rejected
    accepted = torch.zeros_like(missed)
    tiny = torch.finfo(p.dtype).tiny
    for i in range(b):
        c = kids[:, i : i + 1]  # [B, 1]
        q_c = qi.gather(1, c).squeeze(1)  # [B]
        a = torch.where(q_c > 0, (residual.gather(1, c).squeeze(1) / q_c.clamp(min=tiny)).clamp(max=1.0), 0.0)
        accepted, missed = accepted + missed * a, missed * (1 - a)
        live = (q_c > 0)[:, None]  # [B, 1] a candidate past q's support does not exist: nothing changes
        rest = (residual - qi).clamp(min=0.0)
        residual = torch.where(live, rest / rest.sum(-1, keepdim=True).clamp(min=tiny), residual)
        without = qi.scatter(1, c, 0.0)
        qi = torch.where(live, without / without.sum(-1, keepdim=True).clamp(min=tiny), qi)
    return accepted
