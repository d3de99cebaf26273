"""Shared tiny-model helpers for the speculoos test suite.

Everything is built offline from configs (no hub access), in float32, with tiny sizes (hidden 32-64, 1-2 layers)
so the whole suite runs in seconds on a couple of CPU cores. Random models give near-uniform logits, so the
helpers scale the logits (`logit_scale`) to make distributions peaked, which makes greedy decisions robust
(no near-ties that float rounding could flip) and gives drafts realistic acceptance rates.

Helpers (plain functions, importable with `from conftest import ...` or through the fixtures below):
  tiny_llama(vocab_size, seed, layers, logit_scale, ...)   LlamaForCausalLM (rotary positions)
  tiny_gpt2(vocab_size, seed, layers, logit_scale, ...)    GPT2LMHeadModel (absolute positions, tied lm_head)
  tiny_qwen2(vocab_size, seed, layers, logit_scale, ...)   Qwen2ForCausalLM
  tiny_model(arch, ...)                                    one of the three by name ("llama", "gpt2", "qwen2")
  perturbed_copy(model, noise, seed)                       a draft = model with its weights perturbed
  tiny_tokenizer()                                         offline PreTrainedTokenizerFast over a word vocab
  tokenizer_words()                                        the words of that vocabulary (ids 0..59)
  make_prompt(length, vocab_size, seed, batch)             random prompt ids, avoiding special ids
  left_pad_batch(prompts, pad_id)                          (input_ids, attention_mask) for left padding

Every model comes back in eval mode with `generation_config.eos_token_id = None` (so generation runs for
`max_new_tokens` unless a test sets an eos) and `pad_token_id = PAD_ID`.
"""

from __future__ import annotations

import copy

import pytest
import torch

# Tiny models: intra-op threading only adds overhead (and, on a busy 2-core machine, OpenMP spin/contention
# can make each tiny matmul take milliseconds). One thread keeps the suite fast and deterministic.
torch.set_num_threads(1)

# Token ids of the tiny tokenizer (and the convention used by every tiny model).
NUM_WORDS = 60
EOS_ID = NUM_WORDS  # "<eos>"
PAD_ID = NUM_WORDS + 1  # "<pad>"
UNK_ID = NUM_WORDS + 2  # "<unk>"
TOKENIZER_LEN = NUM_WORDS + 3  # 63
DEFAULT_VOCAB = 64

ARCHS = ("llama", "gpt2", "qwen2")


def _finish(model, seed: int, logit_scale: float):
    """Deterministic re-init of the weights, peaked logits, eval mode and neutral special tokens."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:  # matrices and embeddings: N(0, 0.2^2) keeps activations lively
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
            elif "bias" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            else:  # norm weights
                param.fill_(1.0)
        _scale_output_logits(model, logit_scale)
    model.eval()
    model.to(torch.float32)
    model.config.eos_token_id = None
    model.config.bos_token_id = None
    model.config.pad_token_id = PAD_ID
    gc = model.generation_config
    gc.eos_token_id = None
    gc.bos_token_id = None
    gc.pad_token_id = PAD_ID
    return model


def _scale_output_logits(model, scale: float) -> None:
    """Multiply the logits by `scale`: through the lm_head if it is untied, else through the final norm."""
    if scale == 1.0:
        return
    head = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() != inp.weight.data_ptr():
        head.weight.mul_(scale)
        return
    # Tied lm_head (GPT-2): scale the final layer norm instead (weight and bias), which scales the logits.
    for name in ("transformer.ln_f", "model.norm"):
        module = model.get_submodule(name) if _has_submodule(model, name) else None
        if module is not None:
            module.weight.mul_(scale)
            if getattr(module, "bias", None) is not None:
                module.bias.mul_(scale)
            return
    raise AssertionError(f"cannot scale logits of {type(model).__name__}")


def _has_submodule(model, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _llama_like(config_cls, model_cls, vocab_size, seed, layers, logit_scale, hidden, attn_implementation, **extra):
    """Llama-shaped configs (Llama, Qwen2): rotary positions, grouped-query attention."""
    torch.manual_seed(seed)
    defaults = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID if PAD_ID < vocab_size else None,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation=attn_implementation,
    )
    defaults.update(extra)
    return _finish(model_cls(config_cls(**defaults)), seed, logit_scale)


def tiny_llama(vocab_size: int = DEFAULT_VOCAB, seed: int = 0, layers: int = 2, logit_scale: float = 4.0,
               hidden: int = 32, attn_implementation: str = "sdpa", **config_kwargs):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _llama_like(LlamaConfig, LlamaForCausalLM, vocab_size, seed, layers, logit_scale, hidden,
                       attn_implementation, **config_kwargs)


def tiny_qwen2(vocab_size: int = DEFAULT_VOCAB, seed: int = 0, layers: int = 2, logit_scale: float = 4.0,
               hidden: int = 32, attn_implementation: str = "sdpa", **config_kwargs):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _llama_like(Qwen2Config, Qwen2ForCausalLM, vocab_size, seed, layers, logit_scale, hidden,
                       attn_implementation, **{"use_sliding_window": False, **config_kwargs})


def tiny_gpt2(vocab_size: int = DEFAULT_VOCAB, seed: int = 0, layers: int = 2, logit_scale: float = 4.0,
              hidden: int = 32, attn_implementation: str = "sdpa", **config_kwargs):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    defaults = dict(
        vocab_size=vocab_size,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=512,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=PAD_ID if PAD_ID < vocab_size else None,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation=attn_implementation,
    )
    defaults.update(config_kwargs)
    config = GPT2Config(**defaults)
    return _finish(GPT2LMHeadModel(config), seed, logit_scale)


_BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen2": tiny_qwen2}


def tiny_model(arch: str, vocab_size: int = DEFAULT_VOCAB, seed: int = 0, **kwargs):
    """A tiny random causal LM of architecture `arch` ("llama", "gpt2" or "qwen2")."""
    return _BUILDERS[arch](vocab_size=vocab_size, seed=seed, **kwargs)


def perturbed_copy(model, noise: float = 0.05, seed: int = 1):
    """A draft: a deep copy of `model` whose weights get Gaussian noise of relative size `noise`.

    Small noise keeps most argmax decisions (high but partial acceptance); noise 0 gives an identical draft.
    """
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            scale = param.detach().float().std() if param.numel() > 1 else param.detach().abs().float()
            scale = float(scale) if float(scale) > 0 else 1.0
            param.add_((torch.randn(param.shape, generator=gen) * noise * scale).to(param.dtype))
    return draft.eval()


def tokenizer_words() -> list[str]:
    """The tiny tokenizer's words, ids 0..NUM_WORDS-1: 'w00'..'w58', then 'abcdef'.

    No word is a suffix of another. 'abcdef' must be a word: transformers' StopStringCriteria tokenizes that
    fixed string to learn how tokens render after a prefix.
    """
    return [f"w{i:02d}" for i in range(NUM_WORDS - 1)] + ["abcdef"]


def tiny_tokenizer():
    """An offline `PreTrainedTokenizerFast`: WordLevel over tokenizer_words() + <eos>, <pad>, <unk> (63 ids).

    Whitespace pre-tokenizer and a decoder that joins tokens with single spaces, so decode/TextStreamer and
    stop_strings work. It is the package's toy tokenizer (speculoos_hf.toy), checked against the ids here.
    """
    from speculoos_hf.toy import TOY_WORDS, toy_tokenizer

    fast = toy_tokenizer()
    assert TOY_WORDS == tokenizer_words() and len(fast) == TOKENIZER_LEN
    assert (fast.eos_token_id, fast.pad_token_id, fast.unk_token_id) == (EOS_ID, PAD_ID, UNK_ID)
    return fast


def make_prompt(length: int, vocab_size: int = NUM_WORDS, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Random prompt ids `[batch, length]` drawn from the word ids (never a special id)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, min(vocab_size, NUM_WORDS), (batch, length), generator=gen)


def left_pad_batch(prompts: list[torch.Tensor], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D prompts into (input_ids [B, L], attention_mask [B, L])."""
    L = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        n = p.numel()
        ids[i, L - n:] = p.flatten()
        mask[i, L - n:] = 1
    return ids, mask


def new_tokens(sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    return sequences[:, prompt_len:]


# ----------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def llama_pair():
    """(target, good draft) Llama pair with the speculative generate() enabled on the target."""
    from speculoos_hf import enable_speculative

    target = enable_speculative(tiny_llama(seed=0))
    return target, perturbed_copy(target, noise=0.05, seed=1)
