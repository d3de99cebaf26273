"""A machine you can simulate: the pass times of a profile (the JSON `speculoos-bench --profile` writes) stand in for
the clock. Same decisions, simulated time, real tokens: the models run as usual on this machine, and

- `SimulatedStopwatch(profile)` (with `timing.using_stopwatch`, or `simulated_machine(profile)`) gives the cost
  model the profile's seconds for each prefill, target pass, draft step and catch-up by its shape (rows, tokens);
- `ForwardPricer(profile, target=..., draft=...)` adds up the profile's seconds of every forward the models run,
  whoever runs them (speculoos, stock generate(), transformers' assisted generation): the call's simulated time.

Pricing (`MachineProfile.target_pass`): a width the profile timed is its time, a width between two timed ones is
interpolated; past the widest timed, a pass costs the prefill's seconds per token (times the rows), never less than
the widest timed. A batch size between two profiled ones is interpolated, one past the largest scales its tokens.
A draft forward over n tokens per row costs the draft's step times the target's T(n) / T(1) at that batch size.
Time the loop spends besides the models (verification, bookkeeping) is not priced: see the round trace for it.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .timing import Work, using_stopwatch


@dataclass(frozen=True)
class MachineProfile:
    """The pass times of one machine and pair. target: {rows: {tokens per row: seconds}}; draft: {rows: seconds of
    a one-token step}; prefill_per_token: the prefill's seconds per prompt token (one row)."""

    name: str
    target: dict
    draft: dict
    prefill_per_token: float
    acceptance: float | None = None

    @classmethod
    def from_dict(cls, result: dict) -> "MachineProfile":
        batches = result["batches"]
        if not batches:
            raise ValueError("the profile times no batch size")
        return cls(
            name=str(result.get("machine", "profile")),
            target={int(b["batch_size"]): {int(m): float(t) for m, t in b["target_pass_s"].items()} for b in batches},
            draft={int(b["batch_size"]): float(b["draft_step_s"]) for b in batches},
            prefill_per_token=float(result["prefill_s"]) / max(int(result["context_tokens"]), 1),
            acceptance=result.get("acceptance"),
        )

    @classmethod
    def load(cls, path) -> "MachineProfile":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def target_pass(self, rows: int, tokens: float) -> float:
        """Seconds of a target pass over `tokens` new tokens in each of `rows` rows."""
        sizes = sorted(self.target)
        if rows in self.target or rows < sizes[0]:
            return self._curve(rows if rows in self.target else sizes[0], tokens)
        if rows > sizes[-1]:
            return self._curve(sizes[-1], tokens * rows / sizes[-1])
        hi = sizes[bisect_left(sizes, rows)]
        lo = sizes[bisect_left(sizes, rows) - 1]
        w = (rows - lo) / (hi - lo)
        return (1 - w) * self._curve(lo, tokens) + w * self._curve(hi, tokens)

    def _curve(self, rows: int, tokens: float) -> float:
        times = self.target[rows]
        widths = sorted(times)
        if tokens <= widths[0]:
            return times[widths[0]]
        if tokens >= widths[-1]:
            return max(times[widths[-1]], self.prefill_per_token * tokens * rows)
        i = bisect_left(widths, tokens)
        lo, hi = widths[i - 1], widths[i]
        return times[lo] + (times[hi] - times[lo]) * (tokens - lo) / (hi - lo)

    def draft_step(self, rows: int) -> float:
        """Seconds of a draft forward of one token per row: interpolated between profiled batch sizes, scaled like
        the target's one-token pass past the largest."""
        sizes = sorted(self.draft)
        if rows in self.draft or rows < sizes[0]:
            return self.draft[rows if rows in self.draft else sizes[0]]
        if rows > sizes[-1]:
            return self.draft[sizes[-1]] * self.target_pass(rows, 1) / self.target_pass(sizes[-1], 1)
        i = bisect_left(sizes, rows)
        lo, hi = sizes[i - 1], sizes[i]
        return self.draft[lo] + (self.draft[hi] - self.draft[lo]) * (rows - lo) / (hi - lo)

    def draft_forward(self, rows: int, tokens: int) -> float:
        """Seconds of a draft forward over `tokens` tokens per row (a catch-up when more than one)."""
        return self.draft_step(rows) * self.target_pass(rows, max(tokens, 1)) / self.target_pass(rows, 1)

    def price(self, work: Work) -> float:
        """Seconds of `work` on this machine."""
        if work.kind in ("prefill", "target"):
            return self.target_pass(work.rows, work.tokens) if work.tokens > 0 else 0.0
        if work.kind == "catch_up":
            return self.draft_forward(work.rows, work.tokens)
        if work.kind == "draft":
            first = self.draft_forward(work.rows, max(work.catch_up, 1))
            return first + (work.tokens - 1) * self.draft_step(work.rows) if work.tokens > 0 else 0.0
        raise ValueError(f"unknown work kind {work.kind!r}")


class SimulatedStopwatch:
    """A stopwatch that reads the profile instead of a clock: every span is the seconds its `Work` takes there."""

    def __init__(self, profile: MachineProfile):
        self.profile = profile

    def clock_key(self) -> tuple:
        """The profile's figures (memory.py: a call on another profile learns nothing from this one's)."""
        return ("profile", repr(self.profile))

    def start(self):
        return None

    def stop(self, mark):
        return None

    def seconds(self, span, work: Work | None = None) -> float:
        return 0.0 if work is None else self.profile.price(work)

    def reported(self, seconds: float, work: Work | None = None) -> float:
        return self.seconds(None, work)


@contextmanager
def simulated_machine(profile: MachineProfile):
    """Within the block, the cost model of every speculative call times with the profile (`SimulatedStopwatch`)."""
    with using_stopwatch(SimulatedStopwatch(profile)) as watch:
        yield watch


class ForwardPricer:
    """Adds up the profile's seconds of every forward of `target` and of each draft module while active (a context
    manager): `seconds`, and `forwards` by role. The shape is read from `input_ids` (or `inputs_embeds`)."""

    def __init__(self, profile: MachineProfile, target, drafts=()):
        self.profile = profile
        self.seconds = 0.0
        self.forwards = {"target": 0, "draft": 0}
        self._models = [(target, "target")] + [(d, "draft") for d in drafts if d is not None and d is not target]
        self._handles = []

    def __enter__(self) -> "ForwardPricer":
        for model, role in self._models:
            hook = (lambda module, args, kwargs, role=role: self._priced(role, args, kwargs))
            self._handles.append(model.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _priced(self, role: str, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        rows, tokens = int(ids.shape[0]), int(ids.shape[1])
        price = self.profile.target_pass if role == "target" else self.profile.draft_forward
        self.seconds += price(rows, tokens)
        self.forwards[role] += 1
