"""The seed README's API: `SpeculativeSampler` and the functions `speculative_sampling` / `auto_regressive_sampling`.

All of it is a thin layer over `model.generate(..., draft_model=...)`, so the two paths can never disagree: both get
the same keywords, hence the same processors. Sampling here is plain sampling from the model's distribution, as in
the speculative sampling papers, unless asked otherwise: the settings of `_PLAIN` are passed at values that leave the
distribution as it is, so that a checkpoint's generation_config (Qwen2.5 instruct ships repetition_penalty 1.1,
top_k 20, top_p 0.8) cannot reshape it; its token rules (EOS and pad ids, bad_words_ids, suppress_tokens,
min_new_tokens, forced BOS/EOS, sequence_bias) and top_h (which has no neutral value) still apply, to both paths.
"""

from __future__ import annotations

import torch

from .generation import DEFAULT_NUM_DRAFT_TOKENS, enable_speculative
from .models import load_model, load_tokenizer

# Plain generation, passed as keywords (stock fills only the settings left unset from the checkpoint): penalties off
_PLAIN = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
# and, when sampling, every warper with a neutral value off; min_p's off value is None, which stock would fill from
# the checkpoint: 0.0 (keeps every token) where the checkpoint sets one
_PLAIN_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                   "eta_cutoff": 0.0}


def _generate_kwargs(model, T: int, temperature, top_k, top_p, do_sample, extra) -> dict:
    """The generate() keywords of both paths: T new tokens, plain generation (see the module docstring) unless
    `temperature` / `top_k` / `top_p` or other generate() keywords in `extra` say otherwise."""
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T (number of new tokens) must be a positive integer, got {T!r}.")
    kwargs = {"max_new_tokens": T, "do_sample": do_sample, **_PLAIN}
    if do_sample:
        kwargs.update(_PLAIN_SAMPLING)
        if getattr(model.generation_config, "min_p", None) is not None:
            kwargs["min_p"] = 0.0
        kwargs.update({k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)) if v is not None})
    kwargs.update(extra)
    return kwargs


def _as_batch(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    return ids[None] if ids.dim() == 1 else ids


def _inputs(model, input_ids, attention_mask, kwargs: dict) -> torch.Tensor:
    """input_ids as a batch on the model's device; the attention mask, if any, goes into `kwargs`."""
    if attention_mask is not None:
        kwargs["attention_mask"] = _as_batch(attention_mask).to(model.device)
    return _as_batch(input_ids).to(model.device)


def speculative_sampling(
    input_ids,
    draft_model,
    target_model,
    T: int = 20,
    K: int = DEFAULT_NUM_DRAFT_TOKENS,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool = True,
    attention_mask=None,
    **generate_kwargs,
) -> torch.Tensor:
    """Generate T tokens after `input_ids` ([L] or [B, L] with `attention_mask`) with speculative sampling: plain
    sampling unless `temperature` / `top_k` / `top_p` (or other generate() keywords) are given (module docstring)."""
    enable_speculative(target_model)
    kwargs = _generate_kwargs(target_model, T, temperature, top_k, top_p, do_sample, generate_kwargs)
    ids = _inputs(target_model, input_ids, attention_mask, kwargs)
    return target_model.generate(ids, draft_model=draft_model, num_draft_tokens=K, **kwargs)


def auto_regressive_sampling(
    input_ids,
    model,
    T: int = 20,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool = True,
    attention_mask=None,
    **generate_kwargs,
) -> torch.Tensor:
    """Baseline: T tokens from `model` alone with the stock generate() (the same plain sampling and settings)."""
    kwargs = _generate_kwargs(model, T, temperature, top_k, top_p, do_sample, generate_kwargs)
    return model.generate(_inputs(model, input_ids, attention_mask, kwargs), **kwargs)


class SpeculativeSampler:
    """A draft and a target with the seed README's methods (`sample`, `auto_regressive_sample`, `sample_and_decode`,
    `auto_regressive_sample_and_decode`, `encode`, `decode`), on top of `generate(draft_model=...)`.

    Args:
        draft_model_name, target_model_name: hub ids, local paths, offline aliases (`speculoos_hf.glue.models`) or loaded
            causal LMs sharing a tokenizer.
        K (`int`, *optional*, defaults to 5): drafts per round.
        tokenizer (*optional*): defaults to the target's.
        dtype, device (*optional*): how to load models given by name.
        temperature, top_k, top_p (*optional*): sampling settings; by default plain sampling (temperature 1, no top-k
            or top-p), as the seed API had.

    Exact as `generate(draft_model=...)` is: samples have the target's distribution. `last_stats` holds the last
    call's `SpeculativeStats`.
    """
    def __init__(
        self,
        draft_model_name,
        target_model_name,
        K: int = DEFAULT_NUM_DRAFT_TOKENS,
        *,
        tokenizer=None,
        dtype=None,
        device=None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ):
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"K (draft tokens per round) must be an integer >= 1, got {K!r}.")
        load_kwargs = {} if dtype is None else {"dtype": dtype}
        self.draft = draft_model_name if not isinstance(draft_model_name, str) else load_model(draft_model_name, **load_kwargs)
        self.target = (
            target_model_name if not isinstance(target_model_name, str) else load_model(target_model_name, **load_kwargs)
        )
        if device is not None:
            self.draft.to(device)
            self.target.to(device)
        enable_speculative(self.target)
        if tokenizer is None:
            name = target_model_name if isinstance(target_model_name, str) else self.target.name_or_path
            tokenizer = load_tokenizer(name)
        elif isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.K = K
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.last_stats = None

    def encode(self, text: str) -> torch.Tensor:
        """Text -> token ids `[1, L]`."""
        return self.tokenizer(text, return_tensors="pt").input_ids

    def decode(self, token_ids) -> str | list[str]:
        """Token ids (`[L]` or `[1, L]`: a string; `[B, L]`: a list of strings) -> text."""
        ids = torch.as_tensor(token_ids)
        if ids.dim() == 2 and ids.shape[0] > 1:
            return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids.flatten(), skip_special_tokens=True)

    def sample(self, input_ids, T: int = 20, **generate_kwargs) -> torch.Tensor:
        """T new tokens with speculative sampling; returns prompt + new tokens `[B, L + T]` (fewer at EOS)."""
        kwargs = {**{k: v for k, v in self.sampling.items() if v is not None}, **generate_kwargs}
        self._default_pad(kwargs)
        self.last_stats = None  # a call that raises leaves no earlier call's numbers behind
        out = speculative_sampling(input_ids, self.draft, self.target, T=T, K=self.K, **kwargs)
        self.last_stats = self.target.speculative_stats
        return out

    def auto_regressive_sample(self, input_ids, T: int = 20, **generate_kwargs) -> torch.Tensor:
        """T new tokens from the target alone (the baseline), same settings."""
        kwargs = {**{k: v for k, v in self.sampling.items() if v is not None}, **generate_kwargs}
        self._default_pad(kwargs)
        return auto_regressive_sampling(input_ids, self.target, T=T, **kwargs)

    def sample_and_decode(self, text: str, T: int = 20, **generate_kwargs) -> str:
        return self.decode(self.sample(self.encode(text), T, **generate_kwargs))

    def auto_regressive_sample_and_decode(self, text: str, T: int = 20, **generate_kwargs) -> str:
        return self.decode(self.auto_regressive_sample(self.encode(text), T, **generate_kwargs))

    def _default_pad(self, kwargs: dict) -> None:
        if "pad_token_id" not in kwargs and getattr(self.tokenizer, "pad_token_id", None) is not None:
            kwargs["pad_token_id"] = self.tokenizer.pad_token_id
