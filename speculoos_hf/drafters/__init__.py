"""Sources of draft tokens behind one interface (`Drafter`), and ways to make a draft model cheaper.

- `ModelDrafter`: a draft model sharing the target's tokenizer (what `draft_model=<model>` builds).
- `OtherTokenizerDrafter`: a draft model with its own tokenizer (`assistant_tokenizer=`).
- `PromptLookupDrafter`: copies from the context (`prompt_lookup_num_tokens=`), no model.
- `HybridDrafter`: prompt lookup where the context has a match, the draft model elsewhere.
- `int8_draft`, `reduced_head_draft`: cheaper copies of a draft model (exactness never depends on the draft).

Which of them a generate() call gets is decided in one place, `select.make_drafter`.
"""

from .base import Drafter, Proposal, RoundOutcome
from .hybrid import HybridDrafter
from .model import ModelDrafter
from .other_tokenizer import OtherTokenizerDrafter
from .prompt_lookup import PromptLookupDrafter
from .quantize import int8_draft
from .reduced_head import frequent_token_ids, reduced_head_draft

__all__ = [
    "Drafter",
    "HybridDrafter",
    "ModelDrafter",
    "OtherTokenizerDrafter",
    "PromptLookupDrafter",
    "Proposal",
    "RoundOutcome",
    "frequent_token_ids",
    "int8_draft",
    "reduced_head_draft",
]
