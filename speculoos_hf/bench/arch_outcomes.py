"""The architecture sweep's settings shared by its runner and its table, and its outcomes: how one generation
compared with the target's own greedy generate()."""

from __future__ import annotations

from dataclasses import dataclass

DRAFT_TOKENS = 4  # fixed K per round (speculoos) and num_assistant_tokens (transformers' fixed-K column)
PROMPT_1 = 6  # batch 1 prompt length (the third row of batch 3)
PROMPTS_3 = (3, 9, 6)  # batch 3 prompt lengths (left-padded)

EXACT, REFUSED, CRASH, DIFFERS, NO_CONFIG, STOCK_BATCH = (
    "exact", "refused", "crash", "differs", "no-config", "stock batch differs")
CLASSES = (EXACT, REFUSED, CRASH, DIFFERS, STOCK_BATCH, NO_CONFIG)


@dataclass
class Outcome:
    """How one generation compared with the reference: a class (CLASSES) and why (message, or what differed)."""

    kind: str
    reason: str = ""
    proposed: int = 0  # draft tokens proposed and accepted (speculoos' per-run counters)
    accepted: int = 0


@dataclass
class TypeResult:
    """The sweep's outcomes for one model type (None: not run)."""

    model_type: str
    batch1: Outcome | None = None
    batch3: Outcome | None = None
    assisted_k: Outcome | None = None  # transformers' assisted generation, fixed DRAFT_TOKENS
    assisted_default: Outcome | None = None  # transformers' assisted generation, its defaults
    seconds: float = 0.0

    def outcomes(self) -> dict:
        return {name: getattr(self, name) for name in ("batch1", "batch3", "assisted_k", "assisted_default")}
