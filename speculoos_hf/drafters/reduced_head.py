"""FR-Spec (Zhao et al. 2025, "FR-Spec: Accelerating Large-Vocabulary Language Models via Frequency-Ranked
Speculative Sampling"): a draft whose LM head covers only the N most frequent token ids.

The LM head of a small draft with a large vocabulary is a big share of its step: Qwen2.5-Coder-0.5B's 151,936 x 896
head is ~27% of its weights. `reduced_head_draft(model, keep_ids)` returns a copy of the draft (its own modules over
the decoder's weights, no extra memory for them) whose head computes logits for the kept ids only and returns full-vocabulary
logits with -inf elsewhere. The draft's q is then exactly 0 outside the kept ids, so it never proposes them; the
accept/reject rule still gives exactly the target distribution (the residual max(0, p - q) carries the mass of the
ids the draft cannot propose), and only acceptance changes: a draft token the target would have accepted is lost
when it falls outside the kept set. Where the logits processors ban every kept id (suppress_tokens, bad_words_ids,
no_repeat_ngram_size), the draft has nothing left there: that row proposes nothing from that position on and the
target picks the token alone (tests/test_reduced_head.py).

Which ids to keep (`frequent_token_ids`): counts from token ids or texts you pass (a corpus of your domain), then
ids by their rank in the tokenizer (byte-level BPE vocabularies such as Qwen's and GPT-2's are ordered by merge
rank, a fair proxy for frequency), always with the tokenizer's special ids (EOS, padding, chat markers).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from .quantize import Int8Linear


class ReducedLMHead(nn.Module):
    """A linear head over `keep_ids` only; returns [..., vocab_size] logits with -inf outside them."""
    def __init__(self, weight: torch.Tensor, keep_ids: torch.Tensor, vocab_size: int, bias: torch.Tensor | None = None):
        super().__init__()
        keep_ids = torch.as_tensor(keep_ids, dtype=torch.long).to(weight.device)
        self.vocab_size = int(vocab_size)
        self.proj = nn.Linear(weight.shape[1], len(keep_ids), bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.proj.weight.copy_(weight[keep_ids])
            if bias is not None:
                self.proj.bias.copy_(bias[keep_ids])
        self.register_buffer("keep_ids", keep_ids, persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # for code that reads lm_head.weight (dtype/device checks)
        return self.proj.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., vocab_size]
        small = self.proj(hidden)  # [..., N]
        full = small.new_full((*small.shape[:-1], self.vocab_size), float("-inf"))  # [..., V]
        return full.index_copy_(-1, self.keep_ids, small)

    def extra_repr(self) -> str:
        return f"kept={len(self.keep_ids)} of vocab_size={self.vocab_size}"


def frequent_token_ids(
    size: int,
    vocab_size: int,
    *,
    token_ids: Iterable[int] | Iterable[Iterable[int]] | None = None,
    texts: Iterable[str] | None = None,
    tokenizer=None,
    always: Iterable[int] = (),
) -> torch.Tensor:
    """The `size` ids to keep out of `vocab_size`, sorted: the tokenizer's special ids and `always`, then ids by count
    in `token_ids` (flat or nested) and in `texts` (tokenised with `tokenizer`), then the remaining ids in increasing
    id order (merge rank for BPE vocabularies)."""
    counts: Counter[int] = Counter()
    if token_ids is not None:
        for item in token_ids:
            if isinstance(item, int):
                counts[item] += 1
            else:
                counts.update(int(i) for i in item)
    if texts is not None:
        if tokenizer is None:
            raise ValueError("frequent_token_ids: texts need a tokenizer to count tokens.")
        for text in texts:
            counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    order: list[int] = []
    seen: set[int] = set()

    def take(ids: Iterable[int]) -> None:
        for i in ids:
            i = int(i)
            if 0 <= i < vocab_size and i not in seen and len(order) < size:
                seen.add(i)
                order.append(i)

    take(always)
    if tokenizer is not None:
        take(getattr(tokenizer, "all_special_ids", []) or [])
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        take(sorted(added))  # chat markers such as <|im_start|>, <|im_end|>, <|endoftext|>
    take(i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    take(range(vocab_size))
    return torch.tensor(sorted(order), dtype=torch.long)


def reduced_head_draft(
    model,
    keep_ids: Sequence[int] | torch.Tensor | None = None,
    *,
    size: int = 32768,
    token_ids=None,
    texts: Iterable[str] | None = None,
    tokenizer=None,
):
    """A copy of `model` (a causal LM with `lm_head`) whose head covers only `keep_ids` (or the `size` most frequent
    ids from `frequent_token_ids(size, ..., token_ids=, texts=, tokenizer=)`), returning full-vocabulary logits with
    -inf outside them. The decoder's weights alias `model`'s (no copy) in modules of its own: a dtype or device
    change of either model leaves the other as it was; `model` is left untouched. Also
    works on a copy made by `int8_draft` (build the reduced head first, then quantise, to quantise it too)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = getattr(model, "lm_head", None)
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"reduced_head_draft needs a model with a linear lm_head; {type(model).__name__} has none.")

    if isinstance(head, Int8Linear):  # int8pack head: dequantised here, re-quantised exactly below (same rows)
        weight = head.weight.float() * head.scales.float()[:, None]
    else:
        weight = head.weight() if callable(head.weight) else head.weight  # torch.ao quantised heads expose weight()
        if weight.is_quantized:
            weight = weight.dequantize()
    bias = head.bias() if callable(getattr(head, "bias", None)) else getattr(head, "bias", None)
    vocab_size = weight.shape[0]
    if keep_ids is None:
        keep_ids = frequent_token_ids(min(size, vocab_size), vocab_size, token_ids=token_ids, texts=texts, tokenizer=tokenizer)
    keep_ids = torch.as_tensor(keep_ids, dtype=torch.long).unique()
    if keep_ids.numel() == 0 or int(keep_ids.min()) < 0 or int(keep_ids.max()) >= vocab_size:
        raise ValueError(f"reduced_head_draft: keep_ids must be non-empty ids in [0, {vocab_size}).")
    new_head = ReducedLMHead(weight.detach(), keep_ids, vocab_size, None if bias is None else bias.detach())
    if isinstance(head, Int8Linear):  # keep the head int8: the kept rows' int8 values and scales, unchanged
        proj = new_head.proj
        small = Int8Linear(proj, head.scales.dtype)
        with torch.no_grad():
            small.weight.copy_(head.weight[new_head.keep_ids])
            small.scales.copy_(head.scales[new_head.keep_ids])
        new_head.proj = small

    return _own_modules(model, head, new_head).eval()


def _own_modules(model, head, new_head):
    """A copy of `model` with `new_head` in place of `head`: its own modules, parameters and buffers (so `.to()`,
    `.half()` or a module swap on either model leaves the other as it was), whose tensors alias `model`'s storage
    (no weight is copied; an in-place write to a weight shows in both)."""
    memo = {id(head): new_head}
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in memo:
            alias = t.detach()
            memo[id(t)] = nn.Parameter(alias, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else alias
    return copy.deepcopy(model, memo)
