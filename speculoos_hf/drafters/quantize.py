"""Making a draft model cheaper. Exactness never depends on the draft (the accept/reject rule corrects any q),
so a draft may be quantised freely: only acceptance and speed change.

On CPU the decode step is bound by reading weights, and the draft's share of a round is K forwards. An int8
copy of the draft (per-channel weights, activations quantised on the fly) reads a quarter of the float32 bytes:
on our 2-core CPU the Qwen2.5-Coder-0.5B draft goes from 82 ms (bf16) to 31 ms per token with the same
acceptance against the 1.5B target.
"""

from __future__ import annotations

import copy
import warnings

import torch


def int8_draft(model):
    """An int8 dynamically quantised copy of `model` for CPU drafting (the original is left untouched)."""
    if model.device.type != "cpu":
        raise ValueError(f"int8_draft quantises for CPU execution; the model is on {model.device}.")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    draft = copy.deepcopy(model).float()  # dynamic quantisation takes float32 modules
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice (still supported in 2.x)
        quantize_dynamic(draft, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return draft.eval()
