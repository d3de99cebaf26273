"""A toy target/draft pair built from configs in a second (no download): for notebooks' small-model mode and demos
of the machinery. The target is a tiny random Llama with peaked logits, the draft the same model with noisy
weights (so acceptance is partial), the tokenizer a word-level one over a small vocabulary."""

from __future__ import annotations

import copy

import torch

TOY_WORDS = [f"w{i:02d}" for i in range(59)] + ["abcdef"]  # no word is a suffix of another (stop strings)


def toy_tokenizer():
    """Offline `PreTrainedTokenizerFast`: the words above plus <eos>, <pad>, <unk>; left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TOY_WORDS)}
    for special in ("<eos>", "<pad>", "<unk>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", padding_side="left"
    )


def toy_pair(seed: int = 0, draft_noise: float = 0.03, logit_scale: float = 3.0, hidden_size: int = 64):
    """(target, draft, tokenizer): tiny Llama models over the toy vocabulary, float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = toy_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    target = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in target.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        target.lm_head.weight.mul_(logit_scale)
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for p in draft.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen) * draft_noise * p.std())
    return target, draft, tokenizer
