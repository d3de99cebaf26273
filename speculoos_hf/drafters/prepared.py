"""The draft a call drafts with: the model as given, or a cheaper copy of it prepared once and reused.

`draft_quantization`: "int8" drafts with `int8_draft(draft)`; "auto" (the default) does so where `int8_pays`: on
CPU, for a draft whose step is a large share of a round; None keeps the draft as given. A copy is made by the first
call that needs it and kept for later calls with the same draft object while the draft's weights stay as they were
(`weights_state`: a change in place, a new dtype or device, a swapped module makes a new copy); the output never
depends on the draft, only speed does. A draft with offloaded ("meta") weights is never copied: "auto" keeps it as
given, "int8" is refused; an already quantised draft is kept as given. Costs measured per backend: docs/speed.md.
"auto" also drafts with a reduced head (FR-Spec, `reduced_head_draft`) once the draft's calls so far show that one
pays (`head_choice`: the ids they used, the step it saves against the acceptance it costs).
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .head_choice import auto_head, note_call
from .quantize import float_linear_bytes, int8_draft, offloaded_tensors
from .reduced_head import reduced_head_draft

logger = logging.getLogger("speculoos_hf")

# float nn.Linear weights below this: a step is bound by per-operation overheads, not by the weight reads int8
# halves (an already quantised draft has none)
MIN_INT8_BYTES = 64 * 2**20
# draft step / target pass from which k drafts are a large share of a round (k = 5 at 0.1: a third of it)
MIN_DRAFT_SHARE = 0.1

SAMPLES_PER_TENSOR = 16  # elements of each weight read into `weights_state` (changes through `.data` bump no version)

_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # draft -> {quantization: _Copy}
_MEASURED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # draft -> {target: _Share}
_TOLD: "weakref.WeakSet" = weakref.WeakSet()  # offloaded drafts "auto" kept as given, said once per draft
_MAKERS = {"int8": int8_draft}  # one per quantization a copy is made for


@dataclass(frozen=True)
class _Copy:
    """A cached copy and the `weights_state` of the draft it was made from."""

    model: Any
    source: tuple


@dataclass(frozen=True)
class _Share:
    """A measured draft step over a target pass, and the `layout` of both models when it was measured."""

    share: float
    layouts: tuple


@dataclass(frozen=True)
class PreparedDraft:
    """What a call drafts with. quantization: "int8", "int8 (auto)", "reduced head N ids (auto)" (with ", int8"
    where both), or None (the draft as given); prepare_s: seconds this call spent making the copy (0 when it was made
    by an earlier call); source: the draft as given where "auto" prepares it (its calls' tokens choose the head)."""

    model: Any
    quantization: str | None = None
    prepare_s: float = 0.0
    source: Any = field(default=None, compare=False, repr=False)


def int8_pays(draft: nn.Module, target: nn.Module, measured_share: float | None = None) -> bool:
    """"auto" drafts in int8: a CPU draft bound by weight reads, its step a big share of a pass (measured or bytes)."""
    if _device_type(draft) != "cpu" or float_linear_bytes(draft) < MIN_INT8_BYTES:
        return False
    share = measured_share if measured_share is not None else step_bytes(draft) / max(step_bytes(target), 1)
    return share >= MIN_DRAFT_SHARE


def prepare_draft(draft, quantization: str | None, target=None) -> PreparedDraft:
    """`draft`, or its cached cheaper copy for `quantization` (None, "int8" or "auto"; "auto" needs the `target` and
    keeps the draft as given without it). Values are checked by `SpeculativeOptions`; "int8" on a draft with
    offloaded weights raises ValueError (before any work)."""
    if quantization is None or not isinstance(draft, PreTrainedModel):
        return PreparedDraft(draft)
    if offloaded_tensors(draft):
        return _keep_offloaded(draft, quantization)
    if not float_linear_bytes(draft):  # already quantised (int8_draft, torch.ao, torchao): nothing left to shrink
        return PreparedDraft(draft)
    if quantization != "auto":
        return _cached_copy(draft, quantization, quantization)
    measured = _measured_share(draft, target)
    int8 = target is not None and int8_pays(draft, target, measured)
    keep = _auto_head(draft, target, measured)
    if keep is None:
        return replace(_cached_copy(draft, "int8", "int8 (auto)") if int8 else PreparedDraft(draft), source=draft)
    label = f"reduced head {len(keep)} ids (auto)" + (", int8" if int8 else "")
    make = (lambda d: int8_draft(reduced_head_draft(d, keep))) if int8 else (lambda d: reduced_head_draft(d, keep))
    return replace(_cached_copy(draft, "head+int8" if int8 else "head", label, make), source=draft)


def _auto_head(draft, target, measured_share: float | None) -> torch.Tensor | None:
    """The reduced head "auto" drafts with (`head_choice.auto_head`: from earlier calls' tokens), or None: a plain
    linear head only, its step share measured with `target` (else from bytes)."""
    head = draft.get_output_embeddings()
    if target is None or type(head) is not nn.Linear:
        return None

    def shares() -> tuple[float, float, list[int]]:
        step = step_bytes(draft)
        share = measured_share if measured_share is not None else step / max(step_bytes(target), 1)
        config = draft.generation_config if draft.generation_config is not None else draft.config
        always = [getattr(config, name, None) for name in ("eos_token_id", "pad_token_id", "bos_token_id")]
        ids = [int(i) for v in always if v is not None for i in (v if isinstance(v, (list, tuple)) else [v])]
        return share, head.weight.numel() * head.weight.element_size() / max(step, 1), ids

    return auto_head(draft, shares)


def note_tokens(prepared: PreparedDraft, sequences: torch.Tensor, pad_id: int | None, cost_model: dict | None
                ) -> None:
    """Count a call's prompt and output ids for the "auto" reduced head of its draft (`head_choice`)."""
    draft = prepared.source
    if isinstance(draft, PreTrainedModel) and type(draft.get_output_embeddings()) is nn.Linear:
        note_call(draft, sequences, draft.get_output_embeddings().weight.shape[0], pad_id, cost_model)


def _keep_offloaded(draft, quantization: str) -> PreparedDraft:
    """A draft whose weights are offloaded ("meta") drafts as given: an int8 copy of empty weights computes garbage."""
    reason = (f"{offloaded_tensors(draft)} weights of the draft {type(draft).__name__} are offloaded (on the 'meta' "
              "device, e.g. by accelerate's device_map), and an int8 copy needs them in memory")
    if quantization == "int8":
        raise ValueError(f"draft_quantization='int8': {reason}. Pass draft_quantization=None to draft with it as "
                         "given, or load the draft without offloading.")
    if draft not in _TOLD:
        _TOLD.add(draft)
        logger.warning("speculoos: draft_quantization='auto' keeps the draft as given: %s.", reason)
    return PreparedDraft(draft)


def _cached_copy(draft, quantization: str, label: str, make=None) -> PreparedDraft:
    """The copy made for `quantization` (by `make`, else its maker), made again when the draft's weights changed
    since (`weights_state`)."""
    copies = _COPIES.setdefault(draft, {})
    state = weights_state(draft)
    cached = copies.get(quantization)
    if cached is not None and cached.source == state:
        return PreparedDraft(cached.model, label)
    started = time.perf_counter()
    copies[quantization] = _Copy((make or _MAKERS[quantization])(draft), state)
    seconds = time.perf_counter() - started
    logger.warning("speculoos: drafting with an %s copy of %s, %s in %.1f s (once per draft and weights; the output "
                   "is unchanged; draft_quantization=None keeps the draft as given)", label, type(draft).__name__,
                   "made" if cached is None else "made again (the draft's weights changed)", seconds)
    return PreparedDraft(copies[quantization].model, label, seconds)


@torch.no_grad()
def weights_state(model: nn.Module) -> tuple:
    """What a copy of `model` depends on: per parameter and buffer its identity, storage, version counter (bumped by
    in-place changes: optimiser steps, load_state_dict), dtype, device and shape, plus the bytes of a few elements of
    each (writes through `.data`, as adapter merges do, bump no version). Cheap: no weight is read whole, one small
    read per device and dtype."""
    tensors = [t for t in (*model.parameters(), *model.buffers())]
    books = tuple((id(t), _storage(t), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors)
    groups: dict = {}
    for t in tensors:
        if t.device.type != "meta" and t.numel() and type(t.detach()) is torch.Tensor:
            groups.setdefault((t.device, t.dtype), []).append(_sample(t))
    sampled = b"".join(torch.cat(parts).view(torch.uint8).cpu().numpy().tobytes() for parts in groups.values())
    return books, hashlib.blake2b(sampled).digest()


def _storage(t: torch.Tensor) -> int:
    try:
        return t.data_ptr()
    except RuntimeError:  # a tensor subclass without one storage (torchao's quantised weights)
        return 0


def _sample(t: torch.Tensor) -> torch.Tensor:
    """Up to SAMPLES_PER_TENSOR elements spread over `t` (a view). [n]"""
    n = t.numel()
    step, size = max(n // SAMPLES_PER_TENSOR, 1), min(n, SAMPLES_PER_TENSOR)
    if t.is_contiguous():
        return torch.as_strided(t, (size,), (step,), t.storage_offset())
    return t.reshape(-1)[: step * size : step]


def layout(model: nn.Module) -> tuple:
    """Which tensors `model` computes with, their dtypes and devices: what its speed depends on."""
    return tuple((id(p), p.dtype, p.device) for p in model.parameters())


def prepared_draft(draft, quantization: str | None, target=None):
    """The model `prepare_draft` returns."""
    return prepare_draft(draft, quantization, target).model


def note_draft_step(prepared: PreparedDraft, target, cost_model: dict | None) -> None:
    """Keep what a call's cost model measured of the draft as given (its step over a one-token-per-row target pass),
    for the "auto" decision of later calls with the same draft and target (while neither changes dtype, device or
    modules: `layout`)."""
    if prepared.quantization is not None or not isinstance(prepared.model, PreTrainedModel) or not cost_model:
        return
    step, passes = cost_model.get("draft_step_s"), cost_model.get("target_pass_s_predicted") or {}
    if step and passes and passes[min(passes)] > 0:  # the smallest m scored is one token per row
        share = _Share(step / passes[min(passes)], (layout(prepared.model), layout(target)))
        _MEASURED.setdefault(prepared.model, weakref.WeakKeyDictionary())[target] = share


def _measured_share(draft, target) -> float | None:
    """The draft's step share measured with `target`, unless either model changed layout since."""
    measured = _MEASURED.get(draft, {}).get(target) if target is not None else None
    if measured is None or measured.layouts != (layout(draft), layout(target)):
        return None
    return measured.share


def step_bytes(model: nn.Module) -> int:
    """Bytes of parameters one decode step reads: all but an untied input embedding, of which it reads a row."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = embedding is None or (output is not None and getattr(output, "weight", None) is embedding.weight)
    skip = set() if tied else {id(p) for p in embedding.parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


def _device_type(model: nn.Module) -> str:
    param = next(model.parameters(), None)
    return "cpu" if param is None else param.device.type
