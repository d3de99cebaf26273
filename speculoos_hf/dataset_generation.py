"""The dataset tool's first import path, kept working: everything lives in `speculoos_hf.dataset` now."""

from .dataset import (
    DatasetJob,
    DatasetRun,
    ForeignOutputError,
    GenerationSummary,
    distributed_state,
    generate_dataset,
    read_records,
)

__all__ = [
    "DatasetJob",
    "DatasetRun",
    "ForeignOutputError",
    "GenerationSummary",
    "distributed_state",
    "generate_dataset",
    "read_records",
]
