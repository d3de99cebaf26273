"""Counters of one speculative generate() call: what was proposed, accepted and how many target passes it took."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RowStats:
    """Counters of one row of the batch (`SpeculativeStats.per_row[i]`): draft tokens proposed and accepted, the
    verification passes the row took part in, its new tokens; `acceptance_rate` and `mean_accepted_length` (new
    tokens per target pass, the bonus or replacement token included) follow from them."""

    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    target_forward_passes: int = 0  # verification rounds this row took part in
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.draft_tokens_accepted / self.draft_tokens_proposed if self.draft_tokens_proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """New tokens per target pass, the bonus/replacement token included (1.0 means no gain)."""
        return self.new_tokens / self.target_forward_passes if self.target_forward_passes else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate, "mean_accepted_length": self.mean_accepted_length}


@dataclass
class SpeculativeStats:
    """Totals over the batch, plus `per_row`. Target passes count verification forwards (the first one reads the
    prompt too, unless `prefill_passes` says a forward of its own read it, as for recurrent targets); draft passes
    count every draft forward (a model draft reads the prompt with its first proposal); `accepted_at_position[j]`
    counts rows that accepted draft j."""

    num_draft_tokens: int
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    target_forward_passes: int = 0
    draft_forward_passes: int = 0
    new_tokens: int = 0
    per_row: list[RowStats] = field(default_factory=list)
    proposed_at_position: list[int] = field(default_factory=list)
    accepted_at_position: list[int] = field(default_factory=list)
    target_input_tokens: int = 0  # tokens fed to the target, prefill included: each is computed exactly once
    draft_input_tokens: int = 0
    target_cache_slots: int = 0  # peak KV slots of the target cache: tokens plus masked holes (batch > 1)
    elapsed_s: float = 0.0
    prefill_passes: int = 0  # target forwards that read the prompt alone (0: it rode with the first round's)
    rounds_without_drafts: int = 0  # target passes that scored one token per row (the cost model's k = 0)
    cost_model: dict | None = None  # num_draft_tokens=None: what the cost model measured and predicted at the end
    draft_quantization: str | None = None  # the draft drafted as: "int8", "int8 (auto)", or None (as given)
    draft_prepare_s: float = 0.0  # seconds this call spent making that copy (0 when an earlier call made it)
    trace: list = field(default_factory=list, repr=False)  # one trace.RoundRecord per round: where its time went

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / proposed draft tokens."""
        return self.draft_tokens_accepted / self.draft_tokens_proposed if self.draft_tokens_proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """New tokens per row per target pass, bonus token included."""
        row_passes = sum(r.target_forward_passes for r in self.per_row)
        return self.new_tokens / row_passes if row_passes else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        """P(draft j accepted | reached j): how acceptance decays along the draft block."""
        return [a / p if p else 0.0 for a, p in zip(self.accepted_at_position, self.proposed_at_position)]

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.elapsed_s if self.elapsed_s else 0.0

    def record_draft(self, quantization: str | None, prepare_s: float) -> None:
        """What the call drafted with (see `drafters.prepared.PreparedDraft`)."""
        self.draft_quantization, self.draft_prepare_s = quantization, prepare_s

    def __getitem__(self, key: str):
        """Dict-style access (`stats["acceptance_rate"]`) for callers that treat stats as a mapping."""
        return self.to_dict()[key]

    def to_dict(self) -> dict:
        return {
            "num_draft_tokens": self.num_draft_tokens,
            "draft_tokens_proposed": self.draft_tokens_proposed,
            "draft_tokens_accepted": self.draft_tokens_accepted,
            "target_forward_passes": self.target_forward_passes,
            "draft_forward_passes": self.draft_forward_passes,
            "new_tokens": self.new_tokens,
            "target_input_tokens": self.target_input_tokens,
            "draft_input_tokens": self.draft_input_tokens,
            "target_cache_slots": self.target_cache_slots,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "acceptance_by_position": self.acceptance_by_position,
            "elapsed_s": self.elapsed_s,
            "tokens_per_second": self.tokens_per_second,
            "rounds_without_drafts": self.rounds_without_drafts,
            "cost_model": self.cost_model,
            "draft_quantization": self.draft_quantization,
            "draft_prepare_s": self.draft_prepare_s,
            "per_row": [r.to_dict() for r in self.per_row],
        }

    def __str__(self) -> str:
        return (
            f"acceptance {self.acceptance_rate:.1%} ({self.draft_tokens_accepted}/{self.draft_tokens_proposed}), "
            f"{self.mean_accepted_length:.2f} tokens per target pass, {self.target_forward_passes} target passes, "
            f"{self.new_tokens} new tokens"
            + (f", {self.rounds_without_drafts} without drafts" if self.rounds_without_drafts else "")
        )
