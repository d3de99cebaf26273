"""Where a model's inputs and outputs live, for plain models and for models dispatched by accelerate.

A model split across devices or offloaded (`device_map=...`) reports `model.device` as its first parameter's
device, which may be "meta" for offloaded weights; its inputs belong on the device of its input embeddings (the
execution device of accelerate's hook, when there is one).
"""

from __future__ import annotations

import torch


def input_device(model) -> torch.device:
    """The device a model's input ids must be on."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    execution_device = getattr(hook, "execution_device", None)
    if execution_device is not None:
        return torch.device(execution_device if not isinstance(execution_device, int) else f"cuda:{execution_device}")
    weight = getattr(embeddings, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    return model.device
