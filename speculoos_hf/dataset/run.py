"""`generate_dataset`: plan, run this process's share, merge, around one `DatasetJob` (docs/dataset.md)."""

from __future__ import annotations

from .distributed import distributed_state
from .inputs import context_length
from .job import DatasetJob
from .lock import OutputLock
from .merge import GenerationSummary, merge
from .plan import Plan, Resume
from .runner import BatchRunner
from .share import run_share
from .store import OutputStore
from .suffix import RunSuffixCache


class DatasetRun:
    """One job over one input into one output file. Opening it takes the output's lock (one writer per output),
    opens the run's suffix cache, reads the input and what the output already holds, and refuses an output written
    for another input or with other options, all before any model is needed. The lock is held until the run has
    generated, or until `close()` (a `with` block closes it)."""

    def __init__(self, data, output, job: DatasetJob, state=None):
        self.job = job
        self.state = distributed_state() if state is None else state
        self.store = OutputStore(output)
        self.store.check_writable()
        self.lock = OutputLock.take(self.store.output, self.state)
        try:
            self.cache = RunSuffixCache.open(job.suffix_cache)
            self.resume = Resume.read(data, self.store, job, self.state)
        except BaseException:
            self.close()
            raise
        self.finished = False

    def __enter__(self) -> DatasetRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the output (a run that has generated has already)."""
        self.lock.release()

    def generate(self, target, draft, tokenizer) -> GenerationSummary:
        """Generate what is missing with `target` (and `draft`, None for the target alone), once; returns the
        summary on every process (counts over all processes)."""
        if self.finished:
            raise RuntimeError("a DatasetRun generates once; open a new one to resume")
        self.finished = True
        try:
            return self._generate(target, draft, tokenizer)
        finally:
            self.close()

    def _generate(self, target, draft, tokenizer) -> GenerationSummary:
        state, cache = self.state, self.cache
        plan = Plan.make(self.resume, tokenizer, context_length(target, draft), self.job, state.num_processes)
        runner = BatchRunner(target, draft, tokenizer, self.job, None if cache is None else cache.cache)
        errors = [runner.error_record(it) for it in plan.input_errors] if state.is_main_process else []
        with state.split_between_processes(plan.batches) as mine:
            mine = list(mine)
        writer = self.store.writer(state.process_index)
        try:
            writer.write(errors)  # input errors cost nothing: the main process writes them
            share = run_share(mine, runner, writer, self.job, state)
        finally:
            writer.close()
        summary = merge(self.resume, errors + share.records, share.counts, len(plan.input_errors), self.store, state)
        if cache is not None and state.is_main_process:
            cache.save()
        return summary


def generate_dataset(target, draft, tokenizer, data, output, job: DatasetJob | None = None, *, state=None,
                     **options) -> GenerationSummary:
    """Generate a completion for every prompt of `data` into the JSONL file `output`: one record per input
    record, in input order, resumable, over one or many processes (docs/dataset.md).

    `target` is any transformers causal LM (placed as you like), `draft` a draft model (None: the target alone),
    `tokenizer` the target's. The options are those of `DatasetJob` (`max_new_tokens`, `do_sample`, `temperature`,
    `batch_size`, `num_draft_tokens`, ...), given as keywords or as `job=`. Under `accelerate launch` each
    process takes its share; `state` is accelerate's `PartialState` (default: `distributed_state()`)."""
    run = DatasetRun(data, output, DatasetJob.build(job, options), state)
    return run.generate(target, draft, tokenizer)
