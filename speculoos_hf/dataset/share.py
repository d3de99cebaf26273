"""A process's share of the batches: each generated in turn (a failing batch retried row by row, so only a row that
fails alone gets an error record), written durably as it finishes, with a progress bar on the main process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .inputs import InputRecord
from .runner import BatchRunner
from .store import PartWriter

GENERATION_FAILED = "generation failed"


@dataclass
class ShareCounts:
    """What one process generated: records, new tokens, draft tokens, wall time."""

    records: int = 0
    new_tokens: int = 0
    proposed: int = 0
    accepted: int = 0
    seconds: float = 0.0

    def add(self, records: list[dict]) -> None:
        self.records += len(records)
        for rec in records:
            self.new_tokens += rec.get("new_tokens", 0)
            self.proposed += rec.get("draft_tokens_proposed") or 0
            self.accepted += rec.get("draft_tokens_accepted") or 0

    def finish(self, seconds: float) -> None:
        self.seconds = seconds

    @classmethod
    def total(cls, counts: list[ShareCounts]) -> ShareCounts:
        """Summed over processes; the time is the slowest process's."""
        return cls(sum(c.records for c in counts), sum(c.new_tokens for c in counts), sum(c.proposed for c in counts),
                   sum(c.accepted for c in counts), max((c.seconds for c in counts), default=0.0))


@dataclass
class Share:
    """The records a process generated in this run, and their counts."""

    records: list[dict] = field(default_factory=list)
    counts: ShareCounts = field(default_factory=ShareCounts)

    def add(self, records: list[dict]) -> None:
        self.records += records
        self.counts.add(records)

    def finish(self, seconds: float) -> None:
        self.counts.finish(seconds)


def run_share(batches: list[list[InputRecord]], runner: BatchRunner, writer: PartWriter, job, state) -> Share:
    """Generate `batches` in turn; each batch's records go to `writer` (durably) as soon as it is done."""
    share = Share()
    bar = _Progress(sum(len(b) for b in batches), state) if job.progress and state.is_main_process else None
    started = time.perf_counter()
    try:
        for batch in batches:
            records = _run_or_retry(runner, batch, job)
            writer.write(records)
            share.add(records)
            if bar is not None:
                bar.update(len(batch), share.counts, time.perf_counter() - started)
    finally:
        if bar is not None:
            bar.close()
    share.finish(time.perf_counter() - started)
    return share


def _run_or_retry(runner: BatchRunner, batch: list[InputRecord], job) -> list[dict]:
    try:
        return runner.run(batch, job.batch_seed(batch[0].index))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as batch_error:  # noqa: BLE001 - retry row by row so one bad row fails alone
        if len(batch) == 1:
            return [runner.error_record(batch[0], _failure(batch_error))]
    records = []
    for item in batch:
        try:
            records += runner.run([item], job.batch_seed(item.index))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            records.append(runner.error_record(item, _failure(e)))
    return records


def _failure(error: Exception) -> str:
    return f"{GENERATION_FAILED}: {type(error).__name__}: {error}"


class _Progress:
    """A tqdm bar over prompts, with tokens/s and the acceptance so far."""

    def __init__(self, total: int, state):
        from tqdm.auto import tqdm

        world = state.num_processes
        desc = "generate" if world == 1 else f"generate (rank 0 of {world})"
        self.bar = tqdm(total=total, desc=desc, unit="prompt", dynamic_ncols=True)

    def update(self, n: int, counts: ShareCounts, elapsed: float) -> None:
        self.bar.update(n)
        postfix = {"tok/s": f"{counts.new_tokens / max(elapsed, 1e-9):.1f}"}
        if counts.proposed:
            postfix["accept"] = f"{counts.accepted / counts.proposed:.0%}"
        self.bar.set_postfix(postfix)

    def close(self) -> None:
        self.bar.close()
