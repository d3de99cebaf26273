"""The process group of a run (accelerate's `PartialState`) and the two collectives the run needs."""

from __future__ import annotations

import os

import torch


def distributed_state():
    """accelerate's `PartialState`: the process group set up by `accelerate launch` (or a single process).

    On a machine without an accelerator, `accelerate launch --multi_gpu --num_processes N` starts N CPU processes;
    they join one gloo group here (accelerate would otherwise take them for separate single-process runs)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = os.environ.get("LOCAL_RANK") is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not has_accelerator)
    return PartialState(cpu=cpu)


def gather(state, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    if state.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def broadcast(state, obj):
    """The main process's `obj`, on every process."""
    if state.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def close_group(state) -> None:
    """Meet the other processes, then take the process group down before the interpreter exits: a gloo group left
    to the interpreter's teardown can abort a process that has done all its work ("terminate called without an
    active exception") and fail the launch."""
    if state.num_processes == 1 or not torch.distributed.is_initialized():
        return
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()
