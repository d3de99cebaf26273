"""The draft a call drafts with: the model as given, or a cheaper copy of it prepared once and reused.

`draft_quantization`: "int8" drafts with `int8_draft(draft)`; "auto" (the default) does so where `int8_pays`: on
CPU, for a draft whose step is a large share of a round; None keeps the draft as given. A copy is made by the first
call that needs it and kept for later calls with the same draft object; the output never depends on the draft, only
speed does. Costs measured per backend: docs/speed.md.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .quantize import int8_draft

logger = logging.getLogger("speculoos_hf")

# float nn.Linear weights below this: a step is bound by per-operation overheads, not by the weight reads int8
# halves (an already quantised draft has none)
MIN_INT8_BYTES = 64 * 2**20
# draft step / target pass from which k drafts are a large share of a round (k = 5 at 0.1: a third of it)
MIN_DRAFT_SHARE = 0.1

_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # draft -> {quantization: copy}
_MEASURED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # draft -> {target: measured step share}
_MAKERS = {"int8": int8_draft}  # one per quantization a copy is made for


@dataclass(frozen=True)
class PreparedDraft:
    """What a call drafts with. quantization: "int8", "int8 (auto)", or None (the draft as given); prepare_s: seconds
    this call spent making the copy (0 when it was made by an earlier call)."""

    model: Any
    quantization: str | None = None
    prepare_s: float = 0.0


def int8_pays(draft: nn.Module, target: nn.Module, measured_share: float | None = None) -> bool:
    """"auto" drafts in int8: a CPU draft bound by weight reads, its step a big share of a pass (measured or bytes)."""
    if _device_type(draft) != "cpu" or float_linear_bytes(draft) < MIN_INT8_BYTES:
        return False
    share = measured_share if measured_share is not None else step_bytes(draft) / max(step_bytes(target), 1)
    return share >= MIN_DRAFT_SHARE


def prepare_draft(draft, quantization: str | None, target=None) -> PreparedDraft:
    """`draft`, or its cached cheaper copy for `quantization` (None, "int8" or "auto"; "auto" needs the `target` and
    keeps the draft as given without it). Values are checked by `SpeculativeOptions`."""
    if quantization is None or not isinstance(draft, PreTrainedModel):
        return PreparedDraft(draft)
    label = quantization
    if quantization == "auto":
        measured = _MEASURED.get(draft, {}).get(target) if target is not None else None
        if target is None or not int8_pays(draft, target, measured):
            return PreparedDraft(draft)
        quantization, label = "int8", "int8 (auto)"
    copies = _COPIES.setdefault(draft, {})
    if quantization in copies:
        return PreparedDraft(copies[quantization], label)
    started = time.perf_counter()
    copies[quantization] = _MAKERS[quantization](draft)
    seconds = time.perf_counter() - started
    logger.warning("speculoos: drafting with an %s copy of %s, made in %.1f s (once per draft; the output is "
                   "unchanged; draft_quantization=None keeps the draft as given)", label, type(draft).__name__, seconds)
    return PreparedDraft(copies[quantization], label, seconds)


def prepared_draft(draft, quantization: str | None, target=None):
    """The model `prepare_draft` returns."""
    return prepare_draft(draft, quantization, target).model


def note_draft_step(prepared: PreparedDraft, target, cost_model: dict | None) -> None:
    """Keep what a call's cost model measured of the draft as given (its step over a one-token-per-row target pass),
    for the "auto" decision of later calls with the same draft and target."""
    if prepared.quantization is not None or not isinstance(prepared.model, PreTrainedModel) or not cost_model:
        return
    step, passes = cost_model.get("draft_step_s"), cost_model.get("target_pass_s_predicted") or {}
    if step and passes and passes[min(passes)] > 0:  # the smallest m scored is one token per row
        _MEASURED.setdefault(prepared.model, weakref.WeakKeyDictionary())[target] = step / passes[min(passes)]


def step_bytes(model: nn.Module) -> int:
    """Bytes of parameters one decode step reads: all but an untied input embedding, of which it reads a row."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = embedding is None or (output is not None and getattr(output, "weight", None) is embedding.weight)
    skip = set() if tied else {id(p) for p in embedding.parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


def float_linear_bytes(model: nn.Module) -> int:
    """Bytes of the plain floating-point nn.Linear weights of `model`: what an int8 copy would shrink."""
    weights = [m.weight for m in model.modules() if type(m) is nn.Linear]
    return sum(w.numel() * w.element_size() for w in weights
               if type(w.detach()) is torch.Tensor and w.is_floating_point())


def _device_type(model: nn.Module) -> str:
    param = next(model.parameters(), None)
    return "cpu" if param is None else param.device.type
