"""What a benchmark call's seconds are: the wall clock (`WallClock`), or a machine profile (`SimulatedClock`,
`--simulate PROFILE.json`): every forward of the target and of the draft (and of the copies speculoos drafts with)
priced by its shape from the profile, and the cost model timing with the profile too. Same decisions, simulated
time, real tokens (see simulated_machine.py)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from ..drafters.prepared import prepared_draft
from ..pacing.simulated_machine import ForwardPricer, MachineProfile, simulated_machine


@dataclass
class Span:
    seconds: float = 0.0


class WallClock:
    """Seconds by the wall clock."""

    name = "wall clock"

    @contextmanager
    def timing(self, target, draft):
        span, start = Span(), time.perf_counter()
        yield span
        span.seconds = time.perf_counter() - start


class SimulatedClock:
    """Seconds priced by `profile`. `quantizations`: the draft copies the methods draft with besides "auto"."""

    def __init__(self, profile: MachineProfile, quantizations=()):
        self.profile = profile
        self.quantizations = ("auto", *quantizations)
        self.name = f"simulated: {profile.name}"

    @contextmanager
    def timing(self, target, draft):
        drafts = [] if draft is None else [draft] + [prepared_draft(draft, q, target) for q in self.quantizations]
        drafts = list({id(d): d for d in drafts}.values())  # each module priced once
        span = Span()
        with simulated_machine(self.profile), ForwardPricer(self.profile, target, drafts) as priced:
            yield span
        span.seconds = priced.seconds


def bench_clock(simulate: str | None, methods=()) -> WallClock | SimulatedClock:
    """The clock `--simulate` asks for (None: the wall clock)."""
    if simulate is None:
        return WallClock()
    quantizations = {m.draft_quantization for m in methods if m.draft_quantization}
    quantizations |= {m.kwargs["draft_quantization"] for m in methods if m.kwargs.get("draft_quantization")}
    return SimulatedClock(MachineProfile.load(simulate), tuple(sorted(quantizations - {"auto"})))


def profile_problem(path: str) -> str | None:
    """Why `path` is no machine profile (the JSON `--profile` writes), or None."""
    try:
        MachineProfile.load(path)
    except FileNotFoundError:
        return f"{path}: no such file"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{path} is not a profile written by speculoos-bench --profile ({type(err).__name__}: {err})"
    return None
