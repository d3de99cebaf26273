"""draft_quantization="auto"'s reduced head (FR-Spec, reduced_head.py): which ids a draft's LM head keeps, chosen
from the tokens of the user's own calls (prompts and outputs, counted as each call ends: no training data), where
the draft step it saves beats the acceptance it costs.

With k drafts per round, a draft step of s target passes and first-draft acceptance a, a round gives
E(k, a) = 1 + a + ... + a^k tokens in 1 + k s passes' time. A head over the N most frequent ids cuts the step by
the head's share h of it times (1 - N / V), and loses the drafts whose token is outside those ids: a share m of the
counted tokens, so acceptance becomes a (1 - m). The N with the best E(k, a (1 - m)) / (1 + k s (1 - h (1 - N/V)))
is kept where it beats the full head by `HEAD_MARGIN`; s, a and k are the cost model's measurements of earlier
calls with this draft (priors before), h the head's share of the step's weight bytes. m counts the ids not seen yet
too: the counted tokens are a sample, and the next calls bring ids it lacks (Good-Turing: as many as the ids seen
once). Decided once per draft, from `MIN_SEEN_TOKENS` counted tokens on; and undone for good where the later calls'
tokens miss the kept ids so often that the full head is faster (a first sample of a few repeated prompts). Exact
whatever it keeps (the verification never depends on the draft).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

MIN_SEEN_TOKENS = 2048  # counted tokens before a head is chosen
UNDO_TOKENS = 512  # tokens counted after a head was chosen before its misses may undo it
HEAD_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)  # kept ids tried
HEAD_MARGIN = 1.03  # a reduced head must beat the full one by this factor
PRIOR_ACCEPTANCE, PRIOR_K = 0.8, 4  # before a call measured them

_SEEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # draft -> TokenCounts
_CHOSEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # draft -> KeptHead or None (decided)


@dataclass
class TokenCounts:
    """How often each id occurred in a draft's calls (prompts and outputs), and what those calls measured."""

    counts: torch.Tensor  # [V] host int64
    acceptance: float = PRIOR_ACCEPTANCE
    k: int = PRIOR_K

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, ids: torch.Tensor) -> None:
        """Count `ids` (any shape, host or device; ids outside the vocabulary are ignored)."""
        flat = ids.reshape(-1).cpu().long()
        flat = flat[(flat >= 0) & (flat < len(self.counts))]
        self.counts += torch.bincount(flat, minlength=len(self.counts))


@dataclass(frozen=True)
class HeadCosts:
    """What a round costs and gives: draft step / target pass, the head's share of the step, acceptance, k."""

    step_share: float
    head_share: float
    acceptance: float
    k: int

    def rate(self, kept: float, missed: float) -> float:
        """Tokens per target pass's time with a head over a share `kept` of the ids missing a share `missed` of
        the tokens (kept=1, missed=0: the full head)."""
        a = self.acceptance * (1.0 - missed)
        tokens = sum(a**j for j in range(self.k + 1))
        return tokens / (1.0 + self.k * self.step_share * (1.0 - self.head_share * (1.0 - kept)))


def note_call(draft, sequences: torch.Tensor, vocab_size: int, pad_id: int | None, cost_model: dict | None) -> None:
    """Count a call's prompt and output ids `sequences` [B, L] (padding left out) for `draft`, and keep the
    acceptance and k its cost model measured."""
    seen = _SEEN.get(draft)
    if seen is None:
        seen = _SEEN[draft] = TokenCounts(torch.zeros(vocab_size, dtype=torch.long))
    ids = sequences if pad_id is None else sequences[sequences != pad_id]
    head = _CHOSEN.get(draft)
    if head is not None and not head.still_pays(ids, len(seen.counts)):
        _CHOSEN[draft] = None  # for good
    seen.add(ids)
    alpha = (cost_model or {}).get("acceptance_by_position") or []
    if alpha:
        seen.acceptance = float(alpha[0])
        seen.k = max(1, int((cost_model or {}).get("best_k_now") or seen.k))


@dataclass
class KeptHead:
    """A chosen head: its ids, the costs it was chosen with, and the tokens counted since and how many it missed."""

    ids: torch.Tensor  # [N] sorted
    costs: HeadCosts
    counted: int = 0
    missed: int = 0

    def still_pays(self, ids: torch.Tensor, vocab_size: int) -> bool:
        """Count a later call's ids; False once `UNDO_TOKENS` of them were counted and the share the head missed
        makes it slower than the full head."""
        flat = ids.reshape(-1).cpu().long()
        self.counted += len(flat)
        self.missed += int((~torch.isin(flat, self.ids)).sum())
        if self.counted < UNDO_TOKENS:
            return True
        return self.costs.rate(len(self.ids) / vocab_size, self.missed / self.counted) >= self.costs.rate(1.0, 0.0)


def auto_head(draft, shares) -> torch.Tensor | None:
    """The kept ids [N] (sorted) of `draft`'s reduced head, or None (the full head): decided once, as soon as
    `MIN_SEEN_TOKENS` tokens were counted (module docstring). `shares()`: (step share, head share, ids every head
    keeps), asked for only when the head is decided (it reads every parameter's size)."""
    if draft in _CHOSEN:
        return None if _CHOSEN[draft] is None else _CHOSEN[draft].ids
    seen = _SEEN.get(draft)
    if seen is None or seen.total < MIN_SEEN_TOKENS:
        return None
    step_share, head_share, always = shares()
    costs = HeadCosts(step_share, head_share, seen.acceptance, seen.k)
    kept = choose_kept_ids(seen.counts, costs, always)
    _CHOSEN[draft] = None if kept is None else KeptHead(kept, costs)
    return kept


def choose_kept_ids(counts: torch.Tensor, costs: HeadCosts, always: list[int] = ()) -> torch.Tensor | None:
    """The best head's ids (sorted) over `counts` [V] (module docstring), or None where no reduced head beats the
    full one by `HEAD_MARGIN`."""
    V = len(counts)
    score = counts.double().clone()
    score[[i for i in always if 0 <= i < V]] = float("inf")  # kept first
    order = score.argsort(descending=True, stable=True)  # [V] ties: the lower id (merge rank)
    total = max(int(counts.sum()), 1)
    covered = counts.double()[order].cumsum(0) / total  # [V] tokens within the first n ids
    unseen = float((counts == 1).sum()) / total  # Good-Turing: the next token's chance to be an id not seen yet
    best, best_rate = None, costs.rate(1.0, 0.0) * HEAD_MARGIN
    for n in (n for n in HEAD_SIZES if n < V):
        rate = costs.rate(n / V, unseen + (1.0 - unseen) * (1.0 - float(covered[n - 1])))
        if rate > best_rate:
            best, best_rate = n, rate
    return None if best is None else order[:best].sort().values
