"""The round trace: where each round's wall time goes (`SpeculativeStats.trace`, one `RoundRecord` per round).

A round's time is cut, in order, into: choosing k (`choose_s`), drafting (`draft_s`), the target's pass
(`target_s`), verification (`verify_s`), the host sync that reads the verdict, with the stop decision
(`sync_s`), and bookkeeping after it: the cost model's books, committing, rolling the caches back, retiring rows
(`bookkeeping_s`). Wall clock laps, no sync added: on a CPU each phase holds its own compute; on a GPU the
device's work shows up where the host waits for it, at the sync.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

PHASES = ("choose_s", "draft_s", "target_s", "verify_s", "sync_s", "bookkeeping_s")


@dataclass
class RoundRecord:
    """One round: its rows, what each row drafted and kept, the target's width, and the seconds of each phase."""

    rows: int  # live rows
    width: int  # tokens per row the target's pass scored (drafts + 1)
    proposed: list[int]  # drafts proposed per row
    accepted: list[int]  # drafts accepted per row
    forwards: int  # draft-model forwards (0: a copy, or no drafts)
    catch_up: int  # committed tokens per row the draft read first
    tree: bool = False  # a token tree's round (width: its nodes + 1; proposed: each row's chain of first candidates)
    choose_s: float = 0.0
    draft_s: float = 0.0
    target_s: float = 0.0
    verify_s: float = 0.0
    sync_s: float = 0.0
    bookkeeping_s: float = 0.0

    @property
    def seconds(self) -> float:
        return sum(getattr(self, p) for p in PHASES)

    def close(self, total: float) -> None:
        """The round took `total` seconds in all: what no lap took (choosing k or a tree before the round's own
        clock started) goes to `choose_s`."""
        self.choose_s += max(total - self.seconds, 0.0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundClock:
    """Laps of one round: `lap(phase)` charges the time since the last lap to `phase`."""

    laps: dict = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = self.laps.get(phase, 0.0) + now - self._last
        self._last = now

    def record(self, proposal, accepted: list[int], tree: bool = False) -> RoundRecord:
        """The round's record (the time since the last lap is its bookkeeping)."""
        self.lap("bookkeeping_s")
        forwards = proposal.forwards if proposal.forwards is not None else proposal.k
        return RoundRecord(len(accepted), proposal.k + 1, list(proposal.counts()), list(accepted),
                           forwards if proposal.k else 0, proposal.catch_up if proposal.k else 0, tree, **self.laps)


def trace_summary(trace: list[RoundRecord]) -> dict:
    """Totals over a trace: seconds and share per phase, rounds, mean drafts and accepted drafts per row and round,
    and target passes per new token's worth (tokens per pass per row, the target's token included)."""
    total = {p: sum(getattr(r, p) for r in trace) for p in PHASES}
    seconds = sum(total.values())
    row_rounds = sum(r.rows for r in trace)
    proposed = sum(sum(r.proposed) for r in trace)
    accepted = sum(sum(r.accepted) for r in trace)
    return {
        "rounds": len(trace),
        "seconds": seconds,
        **{p: total[p] for p in PHASES},
        "share": {p: (total[p] / seconds if seconds else 0.0) for p in PHASES},
        "drafts_per_row_round": proposed / row_rounds if row_rounds else 0.0,
        "accepted_per_row_round": accepted / row_rounds if row_rounds else 0.0,
        "tokens_per_pass_per_row": (accepted + row_rounds) / row_rounds if row_rounds else 0.0,
    }
