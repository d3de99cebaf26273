"""Tiny random models for every model type of transformers' causal-LM mapping (the architecture sweep's models).

Generic rule: start from the config class's defaults and shrink every size-like field (hidden sizes, layers, heads,
head sizes, intermediate sizes, experts, vocabulary, state sizes, windows), recursing into sub-configs; a hybrid's
layer pattern is cut to one layer of each kind. Per-type overrides (`_OVERRIDES`) only where the rule fails.
Special tokens: no eos or bos (generation runs to length), pad = PAD_ID, other special ids at the top of the
vocabulary, far from the prompts' ids (0..59).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

VOCAB = 96
WORDS = 60  # prompts and generated tokens use ids 0..59; the ids above are special
PAD_ID = 61  # the suite's pad id
HIDDEN = 32
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 8
FFN = 64
LAYERS = 2
WINDOW = 4  # sliding windows: smaller than the shortest prompt plus the new tokens
POSITIONS = 256


def causal_lm_types() -> list[str]:
    """Every model type of transformers' causal-LM mapping, sorted."""
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


# field name (exact) -> value; checked before the patterns below
_EXACT = {
    "vocab_size": VOCAB, "num_key_value_heads": KV_HEADS, "kv_n_heads": 1, "swa_num_key_value_heads": KV_HEADS,
    "num_experts_per_tok": 2, "moe_k": 2, "moe_topk": 2, "moe_top_k": 2, "topk_group": 1, "n_group": 1,
    "n_groups": 1, "mamba_n_groups": 1, "mamba_ngroups": 1, "num_shared_experts": 1, "n_shared_experts": 1,
    "moe_num_shared_experts": 1, "q_lora_rank": 16, "kv_lora_rank": 16, "o_lora_rank": 16, "o_groups": 1,
    "max_window_layers": 0, "first_k_dense_replace": 1, "num_dense_layers": 1, "tie_word_embeddings": False,
    "tie_word_embedding": False, "initializer_range": 0.02, "use_cache": True, "num_nextn_predict_layers": 0,
    "num_mtp_layers": 0, "index_topk": 4, "index_n_heads": 2, "index_num_heads": 2, "encoder_hash_byte_group_vocab": 64,
    "rotary_dim": HEAD_DIM // 2, "hc_lowrank": 8, "gated_norm_rank": 8, "loop_gate_rank": 8, "laurel_rank": 8,
    "adapter_rank": 8,
}
# sizes shrunk even where the class default is None (some models need them set)
_REQUIRED = ("head_dim", "num_key_value_heads", "num_experts_per_tok", "n_routed_experts")
# (pattern on the field name, value): the first match wins
_PATTERNS = [
    (r"(^|_)(dropout|pdrop|drop|layerdrop)($|_)|dropout_prob", 0.0),
    (r"vocab_size", VOCAB),
    (r"max_position_embeddings|^n_positions$|^n_ctx$|^max_seq_len$|^context_length$|max_target_positions"
     r"|max_source_positions", POSITIONS),
    (r"sliding_window$|sliding_window_size|attention_window_size|^local_attention$|^window_size$"
     r"|attention_chunk_size|local_attention_window_len|keep_window_size", WINDOW),
    (r"(^|_)(num_hidden_layers|num_layers|n_layers?|decoder_layers|encoder_layers|depth|num_decoder_layers"
     r"|num_encoder_layers|conf_num_hidden_layers|num_global_layers|num_blocks)$", LAYERS),
    (r"head_dim$|^dim_head$|^d_head$|attention_head_size|^kv_channels$|^d_rel$|head_size$", HEAD_DIM),
    (r"heads$|^n_head$|^attention_heads$", HEADS),
    (r"intermediate_size|ffn_dim|ffn_hidden_size|^d_inner$|^dff$|^dim_ff$|feed_forward_size|^n_inner$"
     r"|^mlp_dim$|expert_ffn_hidden_size", FFN),
    (r"^(num_experts|num_local_experts|n_routed_experts|moe_num_experts)$", 4),
    (r"state_size$|^mamba_d_state$|^ssm_state_size$", 8),
    (r"^(hidden_size|d_model|n_embd|emb_dim|embed_dim|embedding_size|input_embedding_size|output_embedding_size"
     r"|word_embed_proj_dim|hidden_size_global|out_hidden_size|projector_input_dim|projector_output_dim"
     r"|vision_output_dim|backbone_hidden_size|audio_embed_dim|mm_embed_dim|output_proj_dims"
     r"|router_hidden_size|mamba_d_ssm|dim_model_base|adapter_in_dim|adapter_out_dim|adapter_input_size"
     r"|downsample_hidden_size|output_channels|nemo_conv_channels|depthwise_separable_out_channel"
     r"|ext_pw_out_channel|hidden_size_per_layer_input|moe_latent_size)$", HIDDEN),
]


def _shrunk(name: str, default):
    """The tiny value of field `name` whose class default is `default` (the default itself when no rule applies)."""
    if default is None and name not in _REQUIRED:  # a feature left off, or a size derived from others
        return None
    if name in _EXACT:
        return _EXACT[name]
    if name.endswith(("token_id", "token_index")) and name not in ("pad_token_id",):
        return default
    for pattern, value in _PATTERNS:
        if re.search(pattern, name):
            if isinstance(default, bool) or (default is not None and not isinstance(default, (int, float))):
                return default
            return value
    return default


def _default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _nullable(config_cls, name: str) -> bool:
    """Whether the class's type annotation of field `name` admits None."""
    field = next((f for f in dataclasses.fields(config_cls) if f.name == name), None)
    return field is None or "None" in str(field.type) or "Optional" in str(field.type)


def _fields(config_cls) -> dict:
    """name -> class default of a config class's fields (empty for a non-dataclass config)."""
    try:
        return {f.name: _default(f) for f in dataclasses.fields(config_cls)}
    except TypeError:
        return {}


_NO_TOKEN = ("eos_token_id", "bos_token_id", "forced_eos_token_id", "forced_bos_token_id", "eod_token_id")


def _token_ids(config_cls, fields: dict) -> dict:
    """Special token fields: eos and bos unset (where the class allows None), pad = PAD_ID, every other id distinct
    at the top of the vocabulary."""
    out, free = {}, iter(range(VOCAB - 1, PAD_ID, -1))
    for name, default in fields.items():
        if name in _NO_TOKEN and _nullable(config_cls, name):
            out[name] = None
        elif name == "pad_token_id":
            out[name] = PAD_ID
        elif re.search(r"token_(id|index)$|^(mask|unk)_index$", name) and isinstance(default, int) \
                and not isinstance(default, bool) or name in _NO_TOKEN:
            out[name] = next(free)
    return out


def _sub_config_classes(config_cls) -> dict:
    """name -> (config class, extra defaults) of a composite config's sub-configs."""
    out = {}
    specs = getattr(config_cls, "sub_configs_defaults", None) or {}
    for name, cls in (getattr(config_cls, "sub_configs", None) or {}).items():
        spec = specs.get(name)
        if spec is not None:
            out[name] = (CONFIG_MAPPING[spec.model_type], dict(spec.init_kwargs))
        elif getattr(cls, "model_type", None) in CONFIG_MAPPING:
            out[name] = (CONFIG_MAPPING[cls.model_type], {})
        elif getattr(cls, "model_type", ""):
            out[name] = (cls, {})
    return out


def tiny_kwargs(config_cls, extra: dict | None = None) -> dict:
    """The shrunk keyword arguments of `config_cls` (sub-configs as dicts, shrunk the same way)."""
    fields = _fields(config_cls)
    fields.update(extra or {})
    kwargs = {name: _shrunk(name, default) for name, default in fields.items()}
    kwargs = {k: v for k, v in kwargs.items() if v is not fields.get(k) or k in (extra or {})}
    if fields.get("num_key_value_heads") in (None, fields.get("num_attention_heads")) and "num_attention_heads" in kwargs:
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]  # multi-head attention stays multi-head
    kwargs.update(_token_ids(config_cls, fields))
    for name, (sub_cls, sub_extra) in _sub_config_classes(config_cls).items():
        kwargs[name] = dict(tiny_kwargs(sub_cls, sub_extra), model_type=sub_cls.model_type)
    kwargs = _with_layer_pattern(config_cls, fields, kwargs)
    for name, value in _OVERRIDES.get(config_cls.model_type, {}).items():
        kwargs[name] = {**kwargs[name], **value} if isinstance(value, dict) and name in kwargs else value
    return kwargs


def build(config_cls, kwargs: dict, tries: int = 12):
    """`config_cls(**kwargs)`; a field that fails the class's type check goes back to its class default (a token id
    that must be set gets a free id at the top of the vocabulary), and the build is tried again."""
    kwargs = dict(kwargs)
    for _ in range(tries):
        try:
            return config_cls(**kwargs)
        except Exception as error:  # strict dataclass validation errors name the field
            match = re.search(r"for field '(\w+)'", str(error))
            if match is None or match.group(1) not in kwargs:
                raise
            name = match.group(1)
            fallback = _fields(config_cls).get(name)
            if name.endswith("token_id") and kwargs[name] is None:
                fallback = PAD_ID - 1 - len(name) % 8
            if kwargs[name] == fallback:
                raise
            kwargs[name] = fallback
    return config_cls(**kwargs)


def _layer_count_field(fields: dict, kwargs: dict) -> str | None:
    for name in ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "decoder_layers"):
        if name in fields and isinstance(kwargs.get(name), int):
            return name
    return None


def _per_layer_lists(config, n: int) -> dict:
    """name -> list of a config's per-layer string fields (layer kinds) of length `n`."""
    out = {}
    for name, value in vars(config).items():
        if isinstance(value, (list, tuple)) and len(value) == n and n > 1 and all(isinstance(v, str) for v in value):
            out[name] = list(value)
    return out


def _with_layer_pattern(config_cls, fields: dict, kwargs: dict) -> dict:
    """`kwargs` with the fewest layers that keep one layer of each kind the class's default layer pattern has (at
    least LAYERS): the first layer of each kind (a tuple over every per-layer list), in order."""
    count = _layer_count_field(fields, kwargs)
    default_n = fields.get(count)
    if count is None or not isinstance(default_n, int) or default_n <= LAYERS:
        return kwargs
    try:
        full = build(config_cls, {**kwargs, count: default_n})
    except Exception:
        return kwargs
    lists = _per_layer_lists(full, default_n)
    if not lists:
        return kwargs
    kinds = list(zip(*lists.values()))
    keep = sorted({kinds.index(kind) for kind in kinds})
    keep = keep if len(keep) >= LAYERS else sorted(set(keep) | set(range(LAYERS)))[:LAYERS]
    out = {**kwargs, count: len(keep)}
    for name, values in lists.items():
        if name in fields:
            out[name] = [values[i] for i in keep]
    return out


# Per-type overrides where the generic rule fails (each with the reason).
_OVERRIDES: dict[str, dict] = {
    # layer patterns set by other fields than a per-layer list: one layer of each kind
    "bamba": dict(attn_layer_indices=[1]),
    "granitemoehybrid": dict(layer_types=["linear_attention", "full_attention"]),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "gemma3n_text": dict(num_hidden_layers=4, num_kv_shared_layers=2,  # the last two layers reuse earlier keys
                         layer_types=["sliding_attention", "full_attention"] * 2),
    "dory": dict(num_hidden_layers=4, n_input_layers=1, n_output_layers=1,  # input, looped and output layers
                 layer_types=["sliding_attention", "full_attention"] * 2),
    "reformer": dict(attn_layers=["local", "local"], axial_pos_shape=[16, 16],  # 16 x 16 = positions
                     axial_pos_embds_dim=[16, 16], local_attn_chunk_length=4),  # (LSH layers fail on tiny sizes)
    # class defaults that do not build a model, or sizes the generic rule gets wrong
    "cohere_compass_text": dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
    "dbrx": dict(attn_config=dict(clip_qkv=8.0)),  # None reaches torch.clamp(min=None, max=None)
    "dots1": dict(n_shared_experts=1),  # None breaks the shared expert
    "dots3_note_text": dict(num_key_value_heads=HEADS,  # its attention needs as many key-value heads as heads
                            swa_num_attention_heads=HEADS, swa_num_key_value_heads=HEADS, swa_q_lora_rank=16,
                            swa_kv_lora_rank=16, swa_head_dim=16, swa_qk_nope_head_dim=8, swa_v_head_dim=8),
    # ^ its sliding layers' sizes are keyword arguments only (swa_*), not fields
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),  # the layer pattern is given as (kinds, repeats)
    "kolibri1_1": dict(head_dim=16),  # NVFP4 rounding of keys and values works on blocks of 16
    "mamba2": dict(num_heads=HIDDEN * 2 // HEAD_DIM),  # heads x head_dim must equal hidden x expand
    "qwen4_exp_text": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=HEAD_DIM, indexer_budget=4,
                           indexer_compress_ratio=2),  # its indexed-attention layers need the indexer's sizes
    "xlstm": dict(hidden_size=128, num_heads=2),  # query/key and value widths round up to multiples of 64
    "zaya": dict(num_experts_per_tok=1),  # ZAYA routes to one expert only
    # one codebook: input_ids [B, L] as for any causal LM (with several, each sequence is num_codebooks rows)
    "musicgen_decoder": dict(num_codebooks=1),
    "musicgen_melody_decoder": dict(num_codebooks=1),
}
# model types whose causal-LM class takes one sub-config of the type's config
_SUB_CONFIG = {"musicgen": "decoder", "musicgen_melody": "decoder"}


# model types that have no forward of their own (the sweep records why instead of building them)
_NO_STANDALONE = {
    "gemma4_assistant": "an assistant head that drafts from its backbone's hidden states and KV cache",
    "gemma4_unified_assistant": "an assistant head that drafts from its backbone's hidden states and KV cache",
}


def _fix_dbrx(config):
    config.attn_config.rope_theta = 10000.0  # DbrxAttention reads it; DbrxAttentionConfig no longer has the field


_CONFIG_FIXES = {"dbrx": _fix_dbrx}


def tiny_config(model_type: str):
    """The tiny config of `model_type` (a key of the causal-LM mapping)."""
    config_cls = CONFIG_MAPPING[model_type]
    # is_decoder: causal attention and a cache for the encoder families' LM heads (BERT, RoBERTa...), as their
    # docs ask of a standalone decoder; decoder-only classes ignore it
    config = build(config_cls, {**tiny_kwargs(config_cls), "is_decoder": True})
    _CONFIG_FIXES.get(model_type, lambda c: None)(config)
    return getattr(config, _SUB_CONFIG[model_type]) if model_type in _SUB_CONFIG else config


def model_class(model_type: str):
    """The causal-LM class transformers maps `model_type` to."""
    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])


LOGIT_STD = 4.0  # peaky logits: greedy is never decided by a near-tie of float rounding


@functools.lru_cache(maxsize=None)
def tiny_model(model_type: str, seed: int = 0):
    """A tiny random float32 `model_type` model in eval mode (built once per process: callers must not change it).

    Logits are scaled to a standard deviation of LOGIT_STD on a probe prompt, and ids from WORDS on (special and
    pad ids) get a large negative logit, so that generation stays on word ids (no image token ever comes up)."""
    if model_type in _NO_STANDALONE:
        raise ValueError(f"{model_type} is {_NO_STANDALONE[model_type]}: no standalone forward")
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    if model_type in _SUB_CONFIG:
        model = model_class(model_type)(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.to(torch.float32).eval()
    if model_type == "xmod":
        model.set_default_language("en_XX")  # X-MOD's adapters need a language
    _neutral_generation_config(model.generation_config, model_type)
    _peaky_words_only(model)
    return model


def _neutral_generation_config(gc, model_type: str) -> None:
    """No eos or bos (generation runs to length), pad = PAD_ID."""
    gc.eos_token_id = gc.bos_token_id = gc.forced_eos_token_id = gc.forced_bos_token_id = None
    gc.pad_token_id = PAD_ID
    if model_type in _SUB_CONFIG:
        gc.decoder_start_token_id = PAD_ID  # MusicGen pads its delay pattern with it


def _peaky_words_only(model) -> None:
    """A forward hook on the output head: logits x a factor that gives them std LOGIT_STD, special ids masked."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no single output head to scale")
    probe = torch.arange(7).unsqueeze(0) * 5 % WORDS  # [1, 7]
    factor = torch.ones(())

    def hook(module, inputs, logits):
        logits = logits * factor
        logits[..., WORDS:] = -1e4
        return logits

    head.register_forward_hook(hook)  # stays registered: a deep copy of the model (the draft) keeps it too
    with torch.no_grad():
        logits = model(input_ids=probe).logits[..., :WORDS].float()  # [1, 7, WORDS]
    std = float(logits.std())
    if std > 0:
        factor.fill_(LOGIT_STD / std)
