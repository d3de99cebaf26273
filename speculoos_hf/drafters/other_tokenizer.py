"""A draft model with another tokenizer than the target's (Timor et al. 2025, "Accelerating LLM Inference with
Lossless Speculative Decoding Algorithms for Heterogeneous Vocabularies", ICML).

Proposals are in target ids, so the usual accept/reject rule keeps the output exact:

- **Sampling: vocabulary intersection.** A draft token is proposable when its bytes are exactly the bytes of one
  target token (special tokens: the same content). The draft's logits on those tokens are moved to the target ids
  (every other target id gets -inf), the target's logits processors run on them with the target prefix (repetition
  penalty, top-p, ... see the same ids and prefixes as on the target side), and q = softmax of the result. The
  proposed token is drawn from that q and q is what we report, which is all exactness needs. (Should the
  processors leave no token, q is a one-hot on id 0: still drawn from what is reported.)
- **Greedy: string level.** The draft decodes greedily with its whole vocabulary; its tokens' bytes are joined
  to the last committed target tokens' text and re-encoded with the target tokenizer; the target ids after the
  committed ones are proposed deterministically (probs=None). The draft runs until every row has k target tokens
  plus one more (the last target token may still grow with the next draft token, so it is left out), or 2k+2
  steps. Any proposal is exact under greedy verification.

**Keeping the draft's cache in step (no prefix recomputation).** The draft always sees its own tokenisation of
the committed text. Per row we keep, on the host: the committed target text as bytes from an *anchor* on (a byte
offset; the draft ids before it are frozen in the cache), the draft ids in the cache after the anchor with their
cache slots, and the draft ids still to feed (pending). After each round (`commit`):

1. the new committed target tokens' bytes are appended to the row's tail (an incomplete UTF-8 character at the end
   waits for its next bytes; invalid bytes inside become U+FFFD);
2. the tail text (typically 8-20 draft tokens) is re-tokenised with the draft tokenizer, all rows in one call;
3. the longest common prefix L of those ids and the ids in the cache (the earlier ones plus, in sampling, the
   accepted proposals that were fed; in greedy, every draft token fed) is kept, capped at len-1 so that the last
   token is always fed again and gives the next logits; the cache's later slots become holes (`KVSlots.keep_first`:
   masked, trailing ones cropped), and the ids after L become pending;
4. the anchor moves forward to a draft-token boundary inside the kept prefix that leaves at least 8 draft tokens
   in the tail, preferring a token that starts with whitespace (re-tokenising from there gives the same ids), and
   only where the draft tokens' bytes are exactly the text's bytes (byte-level BPE, character tokenizers).
   Elsewhere the anchor stays: still exact and no KV recomputed, only a longer string re-tokenised on the host.

The next `propose` feeds every row's pending ids in one forward (right-aligned, holes in front for shorter rows),
then drafts one token per forward (the model-running half is `DraftRunner`'s, shared with `ModelDrafter`). So
each draft token is computed once, except those whose tokenisation changed once more text arrived (typically
the last one or two of a round); nothing before the anchor is ever touched.
The prompt is fed the same way in the first round (with the draft tokenizer's own BOS, if it adds one).

Batches: rows are independent on the host; the device work is batched (holes as in `kv_slots.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..loop.state import DecodeContext, DecodeState
from .base import Proposal, RoundOutcome
from .runner import DraftRunner, FedDrafts

WINDOW = 8  # draft tokens kept after the anchor (re-tokenised every round)
CONTEXT_TOKENS = 3  # committed target tokens joined to the draft's text before re-encoding (greedy)


# ----------------------------------------------------------------------------------------------- token bytes


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_types(tokenizer) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return set()
    try:
        spec = json.loads(decoder.__getstate__())
    except Exception:
        return set()
    types, stack = set(), [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "type" in node:
                types.add(node["type"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return types


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id stands for in decoded text, ids 0..len(tokenizer)-1; added and special tokens: their
    content. Byte-level BPE (GPT-2, Qwen, Llama 3, SmolLM) and sentencepiece (▁, <0xNN>) exactly; other schemes
    from decoding each id alone."""
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    types = _decoder_types(tokenizer)
    added = {i: str(getattr(t, "content", t)) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    out: list[bytes] = []
    if "ByteLevel" in types:
        table = _bytes_to_unicode()
        for i, tok in enumerate(tokens):
            if i in added or tok is None:
                out.append(added.get(i, "").encode())
            elif all(c in table for c in tok):
                out.append(bytes(table[c] for c in tok))
            else:
                out.append(tok.encode())
        return out
    if "Metaspace" in types or ("ByteFallback" in types and "Replace" in types):
        for i, tok in enumerate(tokens):
            if i in added or tok is None:
                out.append(added.get(i, "").encode())
            elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                out.append(bytes([int(tok[3:5], 16)]))
            else:
                out.append(tok.replace("\u2581", " ").encode())
        return out
    for i in range(n):
        out.append(added[i].encode() if i in added else tokenizer.decode([i]).encode())
    return out


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(t, "special", False):
            ids.add(i)
    return ids


def decode_tail(buf: bytes) -> tuple[str, int]:
    """(text, n): the text of `buf[:n]`, where n leaves out an incomplete UTF-8 character at the very end (its
    next bytes are still to come); invalid bytes inside become U+FFFD."""
    parts, pos = [], 0
    while True:
        try:
            parts.append(buf[pos:].decode("utf-8"))
            return "".join(parts), len(buf)
        except UnicodeDecodeError as e:
            parts.append(buf[pos : pos + e.start].decode("utf-8"))
            if pos + e.end == len(buf) and e.reason == "unexpected end of data":
                return "".join(parts), pos + e.start
            parts.append("\ufffd")
            pos += e.end


class VocabBridge:
    """Byte tables of both tokenizers and the intersection of their vocabularies (ids whose bytes are equal).

    target_text[t]: bytes target id t contributes to the draft's text (a target special token the draft tokenizer
                    does not know contributes nothing, so the draft never sees e.g. the target's BOS as text).
    d2t / t2d:      [V_draft] / [V_target] long, the id with the same bytes on the other side, or -1.
    inter_d, inter_t: the intersection as aligned index tensors.
    """

    def __init__(self, target_tokenizer, draft_tokenizer, target_vocab_size: int, draft_vocab_size: int):
        self.target_tokenizer, self.draft_tokenizer = target_tokenizer, draft_tokenizer
        t_bytes, d_bytes = token_bytes(target_tokenizer), token_bytes(draft_tokenizer)
        t_special, d_special = _special_ids(target_tokenizer), _special_ids(draft_tokenizer)
        d_special_content = {d_bytes[i] for i in d_special if i < len(d_bytes)}
        self.target_text = [
            b if (i not in t_special or b in d_special_content) else b"" for i, b in enumerate(t_bytes)
        ]
        self.draft_bytes, self.target_bytes = d_bytes, t_bytes
        by_bytes: dict[tuple[bool, bytes], int] = {}
        for i, b in enumerate(t_bytes[:target_vocab_size]):
            if b:
                by_bytes.setdefault((i in t_special, b), i)
        d2t = torch.full((max(draft_vocab_size, len(d_bytes)),), -1, dtype=torch.long)
        t2d = torch.full((max(target_vocab_size, len(t_bytes)),), -1, dtype=torch.long)
        for j, b in enumerate(d_bytes[:draft_vocab_size]):
            i = by_bytes.get((j in d_special, b)) if b else None
            if i is not None and t2d[i] < 0:
                d2t[j], t2d[i] = i, j
        self.d2t, self.t2d = d2t, t2d
        self.inter_d = torch.nonzero(d2t >= 0).squeeze(1)
        self.inter_t = d2t[self.inter_d]
        self.t2d_list = t2d.tolist()
        if len(self.inter_d) == 0:
            raise ValueError("The draft and target tokenizers have no token in common; this draft cannot propose.")

    @property
    def size(self) -> int:
        return len(self.inter_d)

    def text_of(self, target_ids) -> bytes:
        table = self.target_text
        n = len(table)
        return b"".join([table[t] if 0 <= t < n else b"" for t in target_ids])


_BRIDGES: dict[tuple[int, int, int, int], VocabBridge] = {}


def vocab_bridge(target_tokenizer, draft_tokenizer, target_vocab_size: int, draft_vocab_size: int) -> VocabBridge:
    """Memoised per tokenizer pair (building the tables of a 150k vocabulary takes about a second)."""
    key = (id(target_tokenizer), id(draft_tokenizer), target_vocab_size, draft_vocab_size)
    bridge = _BRIDGES.get(key)
    if bridge is None or bridge.target_tokenizer is not target_tokenizer or bridge.draft_tokenizer is not draft_tokenizer:
        bridge = _BRIDGES[key] = VocabBridge(target_tokenizer, draft_tokenizer, target_vocab_size, draft_vocab_size)
    return bridge


# ----------------------------------------------------------------------------------------------- the drafter


class IntersectionVocab:
    """Sampling over the vocabulary intersection: the draft's logits on the ids both tokenizers share, moved to the
    target's ids (-inf elsewhere); a proposed target id is fed to the draft as its draft id."""

    def __init__(self, bridge: VocabBridge, target_device, draft_device):
        self.inter_t = bridge.inter_t.to(target_device)  # [N]
        self.inter_d = bridge.inter_d.to(draft_device)  # [N]
        self.t2d = bridge.t2d.to(target_device)  # [V_target]

    def scores(self, logits: torch.Tensor, ctx: DecodeContext) -> torch.Tensor:
        scores = torch.full((logits.shape[0], ctx.vocab_size), float("-inf"), device=ctx.device)  # [B, V]
        scores[:, self.inter_t] = logits[:, self.inter_d].to(ctx.device)
        return scores

    def draft_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.t2d[tokens].clamp(min=0)  # [B] (only intersection ids are ever proposed)


@dataclass
class _Row:
    """Host bookkeeping of one live row (see the module docstring)."""

    tail: bytearray  # committed target text from the anchor on
    consumed: int  # committed target positions whose bytes are in `tail` (or before the anchor)
    ids: list[int] = field(default_factory=list)  # draft ids in the cache after the anchor, in order
    pending: list[int] = field(default_factory=list)  # draft ids to feed next
    frozen: int = 0  # real tokens in the cache before the anchor (the row's first ones)
    frozen_ids: list[int] = field(default_factory=list)  # those tokens (for checks; a few ints per round)
    head: list[int] = field(default_factory=list)  # tokens the draft tokenizer puts before the prompt (BOS)


class OtherTokenizerDrafter:
    """Proposes with a causal LM whose tokenizer differs from the target's; proposals are in target ids. What
    `draft_model=` with `tokenizer=` and `assistant_tokenizer=` builds when the two tokenizers differ.

    Args:
        model (`PreTrainedModel`): the draft causal LM.
        target_tokenizer / draft_tokenizer: the two tokenizers (transformers' `tokenizer=` / `assistant_tokenizer=`).
        target_vocab_size (`int`): the target's logits width.
        cache (`Cache`, *optional*): the draft's KV cache (default: a fresh `DynamicCache`).
        confidence_threshold (`float`, *optional*): dynamic lookahead as in `ModelDrafter` (sampling only).
        window (`int`, *optional*, defaults to 8): draft tokens kept after the anchor and re-tokenised each round.

    Exact (Timor et al. 2025): sampling proposes only the draft's tokens whose bytes are exactly one target token,
    with q their restricted distribution; greedy proposes the draft's greedy text re-encoded in target ids. It costs
    the draft's forwards plus re-tokenising a short tail of text each round.
    """

    def __init__(self, model, target_tokenizer, draft_tokenizer, target_vocab_size: int, cache=None,
                 confidence_threshold: float | None = None, window: int = WINDOW):
        self.model = model
        self.runner = DraftRunner(model, cache, confidence_threshold)
        self.window = window
        self.target_tokenizer, self.draft_tokenizer = target_tokenizer, draft_tokenizer
        draft_vocab = model.config.get_text_config().vocab_size
        self.bridge = vocab_bridge(target_tokenizer, draft_tokenizer, target_vocab_size, draft_vocab)
        self.vocab: IntersectionVocab | None = None
        self.rows: list[_Row] = []
        fallback = [getattr(draft_tokenizer, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id")]
        self._fallback_id = next((f for f in fallback if f is not None), 0)  # fed when a row has no text at all
        self._draft_special = _special_ids(draft_tokenizer)

    @property
    def forward_passes(self) -> int:
        return self.runner.forward_passes

    @property
    def input_tokens(self) -> int:
        return self.runner.input_tokens

    # -- the Drafter interface ---------------------------------------------------------------------------------

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        """Tokenise each prompt's text with the draft tokenizer; it is fed with the first proposal."""
        self.ctx = ctx
        self.runner.start(state.batch_size)
        self.vocab = IntersectionVocab(self.bridge, ctx.device, self.runner.device)
        self.rows = []
        texts = []
        valid = state.valid_host
        for i in range(state.batch_size):
            n = state.lengths[i]
            ids = [t for t, v in zip(state.seq_host[i, :n].tolist(), valid[i, :n].tolist()) if v]
            row = _Row(tail=bytearray(self.bridge.text_of(ids)), consumed=n)
            self.rows.append(row)
            texts.append(decode_tail(bytes(row.tail))[0])
        with_special = self._encode(texts, add_special_tokens=True)
        plain = self._encode(texts)
        for row, w, p in zip(self.rows, with_special, plain):
            cut = len(w) - len(p)
            row.head = w[:cut] if cut > 0 and w[cut:] == p else []
            row.pending = p if p else [self._fallback_id]

    def propose(self, state: DecodeState, k: int) -> Proposal:
        logits = self._feed_pending()  # [B, V_draft]
        if self.ctx.do_sample:
            return self.runner.draft(self.ctx, state, k, logits, self.vocab)
        return self._propose_greedy(state, k, logits)

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        """Re-tokenise each row's tail with the new committed text; keep the cache's longest common prefix."""
        known = self._known_ids(state, outcome, self.runner.take_fed())
        self._append_committed(state)
        texts, usable = zip(*(decode_tail(bytes(row.tail)) for row in self.rows)) if self.rows else ((), ())
        encoded = self._encode(list(texts))
        keep = []  # per row: how many of its real cache tokens stay
        for i, row in enumerate(self.rows):
            new_ids, ids = encoded[i], known[i]
            L = max(0, min(_common_prefix(ids, new_ids), len(new_ids) - 1))
            row.ids = ids[:L]
            row.pending = new_ids[L:] if new_ids else [self._fallback_id]
            keep.append(row.frozen + L)
            self._advance_anchor(row, new_ids, L, usable[i])
        self.runner.keep_first(keep)

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.runner.select_rows(alive, alive_host)
        self.rows = [self.rows[i] for i in alive_host]

    # -- steps ------------------------------------------------------------------------------------------------------

    def _known_ids(self, state: DecodeState, outcome: RoundOutcome, fed: FedDrafts | None) -> list[list[int]]:
        """Per row: the draft ids in the cache after the anchor, as far as known on the host. Greedy: every draft id
        fed (the common prefix with the new text keeps those that fit); sampling: the accepted drafts that were fed."""
        known = []
        for i, row in enumerate(self.rows):
            if fed is None:
                extra = []
            elif not self.ctx.do_sample:
                extra = fed.row_ids(i)
            else:
                n = max(0, min(outcome.accepted[i], outcome.committed[i], fed.count))
                C0 = outcome.old_lengths[i]
                extra = [self.bridge.t2d_list[t] for t in state.seq_host[i, C0 : C0 + n].tolist()]
            known.append(row.ids + extra)
        return known

    def _append_committed(self, state: DecodeState) -> None:
        """Each row's newly committed target text goes to its tail."""
        for i, row in enumerate(self.rows):
            n_new = state.lengths[i]
            new = state.seq_host[i, row.consumed : n_new].tolist()
            valid = state.valid_host[i, row.consumed : n_new].tolist()
            row.tail += self.bridge.text_of([t for t, v in zip(new, valid) if v])
            row.consumed = n_new

    def _encode(self, texts: list[str], add_special_tokens: bool = False, tokenizer=None) -> list[list[int]]:
        """Token ids of each text (rows often share a text: each distinct one is encoded once, in one batch)."""
        if not texts:
            return []
        tok = tokenizer if tokenizer is not None else self.draft_tokenizer
        distinct = list(dict.fromkeys(texts))
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch(distinct, add_special_tokens=add_special_tokens)]
        else:
            ids = [list(x) for x in tok(distinct, add_special_tokens=add_special_tokens)["input_ids"]]
        by_text = dict(zip(distinct, ids))
        return [list(by_text[t]) for t in texts]

    def _feed_pending(self) -> torch.Tensor:
        """One forward over each row's pending draft ids, right-aligned (holes in front); logits at the last one."""
        chunks = [row.head + row.pending for row in self.rows]
        width = max(len(c) for c in chunks)
        tokens = torch.tensor([[0] * (width - len(c)) + c for c in chunks], dtype=torch.long)  # [B, w]
        valid = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunks], dtype=torch.long)  # [B, w]
        for row in self.rows:
            row.frozen += len(row.head)
            row.frozen_ids += row.head
            row.head = []
            row.ids += row.pending
            row.pending = []
        return self.runner.feed(tokens, valid)  # [B, V_draft]

    def _propose_greedy(self, state: DecodeState, k: int, logits: torch.Tensor) -> Proposal:
        """String level: the draft decodes greedily; its text after the last committed target tokens is
        re-encoded with the target tokenizer and the first k target ids are proposed (probs=None)."""
        B, special = len(self.rows), self._draft_special
        contexts = []
        for i in range(B):
            n = state.lengths[i]
            contexts.append(state.seq_host[i, max(state.first_valid[i], n - CONTEXT_TOKENS) : n].tolist())
        drafted: list[list[int]] = [[] for _ in range(B)]  # draft ids that make each row's draft text
        complete = [False] * B  # the row's draft text ended with a special token (EOS): nothing more to add
        found: list[list[int]] = [[] for _ in range(B)]
        max_steps = 2 * k + 2
        g = logits.argmax(dim=-1)  # [B]
        for step in range(max_steps):
            g_host = g.tolist()
            for i in range(B):
                if not complete[i]:
                    drafted[i].append(g_host[i])
                    complete[i] = g_host[i] in special
            if step + 1 >= (k + 1) // 2 or step + 1 == max_steps:
                found = self._target_ids(contexts, drafted)
                if all(complete[i] or len(found[i]) > k for i in range(B)):
                    break
            if step + 1 == max_steps:
                break
            g = self.runner.step(g, g_host).argmax(dim=-1)  # [B] (the fed ids are recorded for commit)
        return self._greedy_proposal([ids[:k] for ids in found])

    def _greedy_proposal(self, proposed: list[list[int]]) -> Proposal:
        """Row i proposes the target ids `proposed[i]` (deterministically: probs=None)."""
        width = max(map(len, proposed), default=0)
        rows = [p + [0] * (width - len(p)) for p in proposed]
        tokens = torch.tensor(rows, dtype=torch.long).view(len(proposed), width)  # [B, k]
        counts = [len(p) for p in proposed]
        return Proposal(tokens.to(self.ctx.device), None, None if all(c == width for c in counts) else counts)

    def _target_ids(self, contexts: list[list[int]], drafted: list[list[int]]) -> list[list[int]]:
        """Target ids for each row's draft text, continuing its committed target ids (`contexts`: the last few)."""
        t_bytes, d_bytes = self.bridge.target_bytes, self.bridge.draft_bytes
        joined, alone = [], []
        for ctx_ids, d in zip(contexts, drafted):
            text = b"".join(d_bytes[x] if x < len(d_bytes) else b"" for x in d)
            ctx_text = b"".join(t_bytes[t] if t < len(t_bytes) else b"" for t in ctx_ids)
            joined.append(decode_tail(ctx_text + text)[0])
            alone.append(decode_tail(text)[0])
        enc_joined = self._encode(joined, tokenizer=self.target_tokenizer)
        enc_alone = self._encode(alone, tokenizer=self.target_tokenizer)
        out = []
        for ctx_ids, ej, ea in zip(contexts, enc_joined, enc_alone):
            m = len(ctx_ids)
            out.append(ej[m:] if ej[:m] == ctx_ids else ea)
        return out

    def _advance_anchor(self, row: _Row, new_ids: list[int], L: int, usable: int) -> None:
        """Freeze the draft ids before a token boundary that leaves `window` tokens in the tail (module docstring)."""
        W = self.window
        n_max = min(L, len(new_ids) - W)
        if n_max < W:
            return
        db = self.bridge.draft_bytes
        starts = [db[x][:1] for x in new_ids[W : n_max + 1]]  # first byte of each candidate's next token
        best = None
        for n in range(n_max, W - 1, -1):  # prefer a boundary before whitespace, else the last one between chars
            first = starts[n - W]
            if first in (b" ", b"\n", b"\t"):
                best = n
                break
            if best is None and first and (first[0] & 0xC0) != 0x80:  # not inside a UTF-8 character
                best = n
            if best is not None and n < n_max - W:
                break
        if best is None:
            return
        prefix = b"".join(db[x] for x in new_ids[:best])
        if len(prefix) > usable or bytes(row.tail[: len(prefix)]) != prefix:
            return  # the draft tokens' bytes are not the text's bytes here: keep the anchor
        del row.tail[: len(prefix)]
        row.frozen += best
        row.frozen_ids += row.ids[:best]
        row.ids = row.ids[best:]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
