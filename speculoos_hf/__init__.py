"""speculoos: exact speculative sampling for HuggingFace transformers generate(), batched.

    model = SpeculativeModelForCausalLM.from_pretrained("Qwen/Qwen2.5-Coder-1.5B-Instruct")
    out = model.generate(input_ids, draft_model=draft, do_sample=True, max_new_tokens=128)
"""

from . import _moved

_moved.install()

from .glue.generation import (
    SpeculativeGenerateOutput,
    SpeculativeGenerationMixin,
    SpeculativeModelForCausalLM,
    enable_speculative,
    speculative_generate,
)
from .glue.sampler import SpeculativeSampler, auto_regressive_sampling, speculative_sampling
from .loop.stats import RowStats, SpeculativeStats
from .drafters.suffix_cache import SuffixCache
from .pacing.lookahead import CostModelLookahead
from .pacing.memory import forget_pacing
from .glue.options import SpeculativeOptions
from .loop.verify import block_verify, greedy_verify, speculative_verify

__version__ = "0.2.0"

__all__ = [
    "CostModelLookahead",
    "RowStats",
    "SpeculativeGenerateOutput",
    "SpeculativeGenerationMixin",
    "SpeculativeModelForCausalLM",
    "SpeculativeOptions",
    "SpeculativeSampler",
    "SpeculativeStats",
    "SuffixCache",
    "auto_regressive_sampling",
    "block_verify",
    "enable_speculative",
    "forget_pacing",
    "greedy_verify",
    "speculative_generate",
    "speculative_sampling",
    "speculative_verify",
]
