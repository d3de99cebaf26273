"""The draft a call drafts with: the model as given, or a cheaper copy of it prepared once and reused.

`draft_quantization="int8"` drafts with `int8_draft(draft)` (on CPU, torch's dynamic int8: the draft's step costs
about a third of bf16 on our 2-core machine, with the same acceptance). The copy is made on the first call and kept
for later calls with the same draft object; the output distribution never depends on the draft, only speed does.
"""

from __future__ import annotations

import logging
import weakref

from transformers import PreTrainedModel

from .quantize import int8_draft

logger = logging.getLogger("speculoos_hf")
_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
QUANTIZATIONS = (None, "int8")


def prepared_draft(draft, quantization: str | None):
    """`draft`, or its cached cheaper copy for `quantization` (None: as given)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"draft_quantization must be one of {QUANTIZATIONS}, got {quantization!r}.")
    if quantization is None or not isinstance(draft, PreTrainedModel):
        return draft
    copies = _COPIES.setdefault(draft, {})
    if quantization not in copies:
        logger.warning("speculoos: drafting with an %s copy of %s (prepared once; the output is unchanged)",
                       quantization, type(draft).__name__)
        copies[quantization] = int8_draft(draft)
    return copies[quantization]
