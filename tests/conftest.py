"""Shared tiny models, helpers and fixtures of the speculoos test suite: the one place that builds test models.

Everything is built offline from configs (no hub access), in float32, with tiny sizes (hidden 16-32, 1-2 layers)
so the whole suite runs in minutes on a couple of CPU cores. Random models give near-uniform logits, so the
helpers scale the logits (`logit_scale`) to make distributions peaked, which makes greedy decisions robust
(no near-ties that float rounding could flip) and gives drafts realistic acceptance rates.

Helpers (plain functions, importable with `from conftest import ...`):
  tiny_model(arch, vocab_size, seed, layers, logit_scale, hidden, attn_implementation, init, **config)
                                                           the one builder: "llama", "gpt2", "qwen2" (ARCHS),
                                                           or "t5", "bart", "mamba" (refusal tests)
  tiny_llama(vocab_size, seed, ...)                        tiny_model("llama", ...)
  perturbed_copy(model, noise, seed)                       a draft = model with its weights perturbed
  tiny_pair(arch, noise, draft_seed, speculative, ...)     (target with speculative generate(), perturbed copy)
  gtest_model(seed, logit_scale, n_ids) / gtest_draft()    the G-tests' 4-token target and draft (see gtest.py)
  tiny_tokenizer()                                         offline PreTrainedTokenizerFast over a word vocab
  tokenizer_words()                                        the words of that vocabulary (ids 0..59)
  make_prompt(length, vocab_size, seed, batch)             random prompt ids, avoiding special ids
  left_pad_batch(prompts, pad_id)                          (input_ids, attention_mask) for left padding

Fixtures: tokenizer (session); ids (a 5-token prompt); pair (module; options from the module's PAIR dict),
fresh_pair (the same, per test, for tests that change the models); trios (module; (target, good, bad) per
architecture); gtest_pair (module; the G-tests' target and draft); tiny_model_dir (module; a saved tiny Llama);
isolated_cache (an empty SPECULOOS_CACHE); kernel_env (module; a Jupyter kernelspec running this interpreter).

Marker `slow` (the long fuzz run): skipped unless `--run-slow` is given or SPECULOOS_FUZZ=N (N cases) is set.

Every ARCHS model built with the default init comes back in eval mode with `generation_config.eos_token_id = None`
(so generation runs for `max_new_tokens` unless a test sets an eos) and `pad_token_id = PAD_ID`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from speculoos_hf import enable_speculative
from speculoos_hf import forget_pacing
from speculoos_hf.pacing.simulated_machine import MachineProfile, simulated_machine

# Tiny models: intra-op threading only adds overhead (and, on a busy 2-core machine, OpenMP spin/contention
# can make each tiny matmul take milliseconds). One thread keeps the suite fast and deterministic.
torch.set_num_threads(1)

# The flat-pass Xeon's profile with the int8 draft (T(m)/T(1) = 1.0-1.1 up to 16 tokens), kept in the repo.
FLAT_PROFILE = Path(__file__).resolve().parent.parent / "benchmarks" / "xeon-amx-bf16" / "xeon_amx_bf16_int8_draft.json"


def on_flat_machine():
    """The cost model times with the flat profile (`simulated_machine`): its choices no longer depend on how busy
    this machine is, so tests of what it decides cannot fail on a loaded machine."""
    return simulated_machine(MachineProfile.load(FLAT_PROFILE))

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


def _architecture(arch: str, vocab_size: int, layers: int, hidden: int, attn_implementation: str):
    """(config class, model class, config fields) of `arch` at the suite's tiny sizes."""
    import transformers as T

    pad = PAD_ID if PAD_ID < vocab_size else None
    if arch in ("llama", "qwen2"):  # rotary positions, grouped-query attention
        fields = dict(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            pad_token_id=pad,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation=attn_implementation,
        )
        if arch == "llama":
            return T.LlamaConfig, T.LlamaForCausalLM, fields
        return T.Qwen2Config, T.Qwen2ForCausalLM, dict(fields, use_sliding_window=False)
    if arch == "gpt2":  # absolute positions, tied lm_head
        fields = dict(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=512,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            pad_token_id=pad,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation=attn_implementation,
        )
        return T.GPT2Config, T.GPT2LMHeadModel, fields
    # Models speculative generate() refuses (tests of the error messages): the library's own special tokens.
    if arch == "t5":  # encoder-decoder
        fields = dict(vocab_size=vocab_size, d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=layers,
                      num_decoder_layers=layers, num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        return T.T5Config, T.T5ForConditionalGeneration, fields
    if arch == "bart":  # encoder-decoder
        fields = dict(vocab_size=vocab_size, d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * hidden,
                      decoder_ffn_dim=2 * hidden, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                      eos_token_id=2, decoder_start_token_id=2)
        return T.BartConfig, T.BartForConditionalGeneration, fields
    if arch == "mamba":  # recurrent cache (cannot be rolled back)
        fields = dict(vocab_size=vocab_size, hidden_size=hidden, state_size=4, num_hidden_layers=layers, expand=2,
                      conv_kernel=2)
        return T.MambaConfig, T.MambaForCausalLM, fields
    raise ValueError(f"unknown tiny architecture {arch!r}")


def tiny_model(arch: str = "llama", vocab_size: int = DEFAULT_VOCAB, seed: int = 0, layers: int = 2,
               logit_scale: float | None = None, hidden: int = 32, attn_implementation: str = "sdpa",
               init: str | None = None, **config_kwargs):
    """The suite's one builder of tiny random models; every other model helper here is a thin wrapper of it.

    arch: "llama", "qwen2", "gpt2" (the causal LMs of ARCHS), or "t5", "bart", "mamba" (refusal tests only: their
        library defaults for special tokens, no attn_implementation).
    init: "peaked" (default for ARCHS): deterministic re-init from `seed`, logits scaled by `logit_scale` (default 4)
        and the suite's conventions (module docstring). "hf" (the only one for t5, bart, mamba): the library's own
        init under torch.manual_seed(seed), the output embeddings multiplied by `logit_scale` (default 1), eval mode,
        the config as built.
    config_kwargs: config fields added to or overriding the tiny defaults.
    """
    config_cls, model_cls, fields = _architecture(arch, vocab_size, layers, hidden, attn_implementation)
    init = init or ("peaked" if arch in ARCHS else "hf")
    assert init == "hf" or (init == "peaked" and arch in ARCHS), (arch, init)
    fields.update(config_kwargs)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**fields))
    if init == "peaked":
        return _finish(model, seed, 4.0 if logit_scale is None else logit_scale)
    model.eval()
    if logit_scale is not None and logit_scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(logit_scale)
    return model


def tiny_llama(vocab_size: int = DEFAULT_VOCAB, seed: int = 0, **kwargs):
    """tiny_model("llama", ...)."""
    return tiny_model("llama", vocab_size, seed, **kwargs)


def tiny_pair(arch: str = "llama", noise: float = 0.05, draft_seed: int = 1, speculative: bool = True, **kwargs):
    """(target, draft): tiny_model(arch, **kwargs) with the speculative generate() enabled (unless `speculative` is
    False) and its perturbed_copy (noise 0.05, seed 1: high but partial greedy acceptance)."""
    target = tiny_model(arch, **kwargs)
    if speculative:
        enable_speculative(target)
    return target, perturbed_copy(target, noise=noise, seed=draft_seed)


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
    stop_strings work. It is the package's toy tokenizer (speculoos_hf.glue.toy), checked against the ids here.
    """
    from speculoos_hf.glue.toy import TOY_WORDS, toy_tokenizer

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


# ------------------------------------------------------------------------------------- the G-tests' 4-token model

GTEST_V = 4  # vocabulary of the G-tests (gtest.V): 4**5 continuations of 5 tokens can be enumerated
GTEST_PAD = GTEST_V  # their pad id, outside the vocabulary, so padded outputs cannot be confused with tokens


def gtest_model(seed: int, logit_scale: float = 6.0, n_ids: int = GTEST_V + 1):
    """The G-tests' target: a tiny Llama (library init) with GTEST_V tokens plus the pad id, which a hook on the
    lm_head keeps from ever being sampled (a processor-free -1e9 on its logit). n_ids <= GTEST_PAD: no pad id."""
    model = tiny_model("llama", n_ids, seed, logit_scale=logit_scale, init="hf", max_position_embeddings=64,
                       pad_token_id=GTEST_PAD if n_ids > GTEST_PAD else None)
    if n_ids > GTEST_PAD:
        model.lm_head.register_forward_hook(mask_pad)
    return model


def mask_pad(module, inputs, output):
    """Forward hook: the G-test pad id gets logit -1e9."""
    output[..., GTEST_PAD] = -1e9
    return output


def gtest_draft(seed: int = 0, noise: float = 0.6, noise_seed: int = 123):
    """The G-tests' draft: gtest_model(seed) with Gaussian noise of `noise` x each tensor's std on every weight
    (acceptance well between 0 and 1, a distribution visibly different from the target's)."""
    draft = gtest_model(seed)
    torch.manual_seed(noise_seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * p.std() * torch.randn_like(p))
    return draft


# ----------------------------------------------------------------------------------------------------- fixtures
#
# Module-scoped models are shared by the tests of one file, which must leave them as they found them (generate()
# only sets `speculative_stats`); a test that changes a model (its generation_config, its forward) takes
# `fresh_pair` or builds its own.


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (the long fuzz run)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs, skipped unless --run-slow or SPECULOOS_FUZZ=N is given")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow are skipped unless asked for (--run-slow, or SPECULOOS_FUZZ=N cases of the long fuzz)."""
    if config.getoption("--run-slow") or os.environ.get("SPECULOOS_FUZZ"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow or set SPECULOOS_FUZZ=N")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global torch seed, and its cost models from their priors (nothing an
    earlier test's calls measured on a shared model is carried, see pacing/memory.py)."""
    torch.manual_seed(0)
    forget_pacing()
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def ids():
    """A one-row prompt of 5 word ids (make_prompt(5, seed=0))."""
    return make_prompt(5, seed=0)


def _pair_options(request) -> dict:
    return dict(getattr(request.module, "PAIR", {}))


@pytest.fixture(scope="module")
def pair(request):
    """tiny_pair(**PAIR), built once per test module; a module sets `PAIR = dict(...)` (tiny_pair's options) for
    another pair than the default (Llama, vocabulary 64, 2 layers, seed 0)."""
    return tiny_pair(**_pair_options(request))


@pytest.fixture
def fresh_pair(request):
    """The module's pair (see `pair`), built anew for one test that changes it."""
    return tiny_pair(**_pair_options(request))


@pytest.fixture(scope="module")
def trios():
    """A function (arch, attn_implementation="sdpa", vocab_size=64) -> (target, good draft, bad draft), each built
    once per test module: tiny_pair(arch, ...) and an unrelated model of the same shape (seed 123)."""
    built: dict = {}

    def get(arch: str = "llama", attn_implementation: str = "sdpa", vocab_size: int = DEFAULT_VOCAB):
        key = (arch, attn_implementation, vocab_size)
        if key not in built:
            kw = dict(vocab_size=vocab_size, attn_implementation=attn_implementation)
            target, good = tiny_pair(arch, **kw)
            built[key] = (target, good, tiny_model(arch, seed=123, **kw))
        return built[key]

    return get


@pytest.fixture(scope="module")
def gtest_pair():
    """(target with the speculative generate(), draft) of the G-tests: gtest_model(0) and gtest_draft()."""
    return enable_speculative(gtest_model(0)), gtest_draft()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama (vocabulary 64, hidden 16, 1 layer, 2 heads) saved with save_pretrained (float32)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama", layers=1, hidden=16, init="hf", num_attention_heads=2, num_key_value_heads=2,
               max_position_embeddings=32).save_pretrained(path)
    return path


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty speculoos cache root (SPECULOOS_CACHE) of the test's own."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SPECULOOS_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A JUPYTER_PATH whose `kernels/python3` launches this interpreter (found before any user or system spec)."""
    import sys

    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(path=str(root / "kernels" / "python3"), overrides={"display_name": "Python 3 (speculoos tests)"})
    spec = KernelSpecManager(kernel_dirs=[str(root / "kernels")]).get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable
    return str(root)

