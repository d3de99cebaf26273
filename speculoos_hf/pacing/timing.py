"""Timing a step of the loop without adding a host sync: wall clock on a CPU (ops run synchronously), CUDA events
on a GPU, read only after the round's own sync has made them complete.

Each span is read with the `Work` it timed (its kind and shape), so that a clock that prices work by its shape
instead of measuring it (a simulated machine, `simulated_machine.SimulatedStopwatch`) can stand in for the real one:
`using_stopwatch(watch)` makes every call in its block time with `watch`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Work:
    """What a timed span ran over `rows` rows. kind: "prefill" (the target reads `tokens` prompt tokens per row),
    "target" (a pass over `tokens` new tokens per row), "draft" (`tokens` draft forwards, one new token per row
    each, the first reading `catch_up` committed tokens per row), "catch_up" (the draft's forward that read
    `tokens` committed tokens per row)."""

    kind: str
    rows: int
    tokens: int
    catch_up: int = 0


class Stopwatch:
    """`mark = watch.start()`, `span = watch.stop(mark)`, and after the round's sync `watch.seconds(span, work)`;
    `watch.reported(seconds, work)` for a time measured elsewhere (the real clock keeps it as it is)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def clock_key(self) -> tuple:
        """What the timings it takes are timings of (memory.py: calls on another clock learn nothing from them)."""
        return ("wall", self.device.type, self.device.index)

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, mark):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            return mark, end
        return time.perf_counter() - mark

    def seconds(self, span, work: Work | None = None) -> float:
        if self.cuda:
            begin, end = span
            return begin.elapsed_time(end) / 1000.0
        return span

    def reported(self, seconds: float, work: Work | None = None) -> float:
        return seconds


_INJECTED: ContextVar = ContextVar("speculoos_stopwatch", default=None)


def stopwatch_for(device: torch.device):
    """The stopwatch a call times with: the one `using_stopwatch` put in place, else the device's real one."""
    injected = _INJECTED.get()
    return injected if injected is not None else Stopwatch(device)


@contextmanager
def using_stopwatch(watch):
    """Within the block, every speculative call's cost model times with `watch` (any object with `start`, `stop`,
    `seconds(span, work)` and `reported(seconds, work)`)."""
    token = _INJECTED.set(watch)
    try:
        yield watch
    finally:
        _INJECTED.reset(token)
