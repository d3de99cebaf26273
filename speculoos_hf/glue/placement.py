"""Where a model's inputs and outputs live, for plain models and for models dispatched by accelerate.

A model split across devices or offloaded (`device_map=...`) reports `model.device` as its first parameter's
device, which may be "meta" for offloaded weights; its inputs belong on the device of its input embeddings (the
execution device of accelerate's hook, when there is one). Its logits come back on the device of its head, or,
where accelerate aligned the model's inputs and outputs (a model spread over several devices), on the input
device; the decoding loop moves what it needs to the input device, where verification runs.

Helpers for loading with a placement (`placement_kwargs`, `parse_max_memory`) and for reporting one
(`placement_summary`) are shared by `speculoos-generate` and the benchmark.
"""

from __future__ import annotations

import re

import torch

__all__ = ["input_device", "is_dispatched", "parse_max_memory", "placement_kwargs", "placement_summary"]


def _as_device(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):  # accelerate names accelerator devices by index
        accelerator = getattr(torch, "accelerator", None)
        current = accelerator.current_accelerator() if accelerator is not None and accelerator.is_available() else None
        return torch.device(current.type if current is not None else "cuda", device)
    return torch.device(device)


def input_device(model) -> torch.device:
    """The device a model's input ids must be on."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    execution_device = getattr(hook, "execution_device", None)
    if execution_device is not None:
        return _as_device(execution_device)
    weight = getattr(embeddings, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    return model.device


def is_dispatched(model) -> bool:
    """True for a model placed by accelerate (a `device_map` at load time, `dispatch_model`, `cpu_offload`, ...)."""
    if getattr(model, "hf_device_map", None):
        return True
    return any(hasattr(module, "_hf_hook") for module in model.modules())


_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_max_memory(spec: str | None) -> dict | None:
    """`"cpu=2GiB"`, `"0=20GiB,cpu=60GiB"` (devices by index, "cpu", "disk"), `"3GiB"` (the accelerator 0 if there
    is one, else the CPU) -> the `max_memory` dict of `from_pretrained` / accelerate."""
    if spec is None or not str(spec).strip():
        return None
    out: dict = {}
    for part in str(spec).split(","):
        part = part.strip()
        device, size = part.split("=", 1) if "=" in part else (None, part)
        if not _SIZE.match(size):
            raise ValueError(f"max memory {part!r}: expected a size such as 2GiB, 500MB or 2000000000.")
        size = size.strip()
        size = int(size) if size.isdigit() else size
        if device is None:
            accelerator = getattr(torch, "accelerator", None)
            device = 0 if accelerator is not None and accelerator.is_available() else "cpu"
        else:
            device = device.strip()
            device = int(device) if device.isdigit() else device
        out[device] = size
    return out


def placement_kwargs(device=None, device_map=None, max_memory=None, offload_folder=None) -> dict:
    """`from_pretrained` keyword arguments for a placement: a single `device`, or an accelerate `device_map`
    (`"auto"`, `"balanced"`, a dict) with an optional `max_memory` (dict or string) and `offload_folder` (for the
    layers that fit nowhere else: "disk"). `max_memory` alone implies `device_map="auto"`."""
    if isinstance(max_memory, str):
        max_memory = parse_max_memory(max_memory)
    if max_memory and device_map is None:
        device_map = "auto"
    if device_map is None:
        return {} if device is None else {"device_map": str(device)}
    kwargs: dict = {"device_map": device_map}
    if max_memory:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    return kwargs


def placement_summary(model) -> dict:
    """Share of the model's parameters (by bytes) on each device: `{"cpu": 0.6, "disk": 0.4}` for a model half
    offloaded to disk; a model on one device gives `{"<device>": 1.0}`."""
    device_map = getattr(model, "hf_device_map", None)
    sizes: dict[str, int] = {}
    for name, param in model.named_parameters():
        nbytes = param.numel() * param.element_size()
        if device_map:
            owner = max((m for m in device_map if m == "" or name == m or name.startswith(m + ".")), key=len,
                        default=None)
            where = str(device_map[owner]) if owner is not None else str(param.device)
        else:
            where = str(param.device)
        if where.isdigit():
            where = str(_as_device(int(where)))
        sizes[where] = sizes.get(where, 0) + nbytes
    total = sum(sizes.values()) or 1
    return {k: v / total for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])}
