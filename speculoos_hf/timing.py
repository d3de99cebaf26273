"""Timing a step of the loop without adding a host sync: wall clock on a CPU (ops run synchronously), CUDA events
on a GPU, read only after the round's own sync has made them complete."""

from __future__ import annotations

import time

import torch


class Stopwatch:
    """`mark = watch.start()`, `span = watch.stop(mark)`, and after the round's sync `watch.seconds(span)`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

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

    def seconds(self, span) -> float:
        if self.cuda:
            begin, end = span
            return begin.elapsed_time(end) / 1000.0
        return span
