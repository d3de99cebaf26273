"""Generate for a whole dataset: one JSON record per prompt, batched, resumable, over one or many processes.

    from speculoos_hf.dataset import generate_dataset
    summary = generate_dataset(target, draft, tokenizer, "prompts.jsonl", "out.jsonl", max_new_tokens=256)

A run is a plan (`plan.py`: the input, what the output already holds, the batches left), a share of the batches
per process (`share.py`, `runner.py`) and a merge (`merge.py`), around one validated `DatasetJob` (`job.py`), with
one writer per output (`lock.py`).
Record format, resuming and processes: docs/dataset.md.
"""

from .distributed import close_group, distributed_state
from .inputs import InputRecord
from .reading import read_records
from .job import DatasetJob
from .lock import OutputBusyError
from .merge import GenerationSummary
from .option_checks import OptionError
from .run import DatasetRun, generate_dataset
from .store import ForeignOutputError, OtherOptionsError, OutputPathError

__all__ = [
    "DatasetJob",
    "DatasetRun",
    "ForeignOutputError",
    "GenerationSummary",
    "InputRecord",
    "OptionError",
    "OtherOptionsError",
    "OutputBusyError",
    "OutputPathError",
    "close_group",
    "distributed_state",
    "generate_dataset",
    "read_records",
]
