"""Which models can score a token tree in one forward: a custom 4D attention mask and per-token position_ids must
reach every attention layer unchanged. Checked for the architectures in TREE_MODEL_TYPES (tests/test_tree_pass.py:
every node's logits equal a clean forward of its path); the others keep the chain. Models that count slots
(sliding windows, ALiBi over slot distances) and recurrent layers (one state per branch) cannot, whatever their type.
"""

from __future__ import annotations

# architectures whose forward takes a 4D float mask and position_ids as given (sdpa and eager attention)
TREE_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "gpt2", "gemma", "phi3", "olmo2", "cohere", "gpt_neox", "opt"})
TREE_ATTENTION = ("sdpa", "eager")


def tree_reason(model, kv) -> str | None:
    """Why `model` (run by `kv`, a KVSlots) cannot score a token tree in one forward; None when it can."""
    config = model.config.get_text_config()
    if config.model_type not in TREE_MODEL_TYPES:
        return f"{config.model_type} is not among the architectures checked with token trees"
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in TREE_ATTENTION:
        return f"{attention} attention takes no custom 4D mask here"
    return kv.tree_reason()
