"""The speculative decoding loop: draft K tokens, verify them in one target pass, keep the accepted prefix.

Invariants per active row b (committed length C_b counts the prompt, padding included, plus the new tokens):
  - `seq[b, :C_b]` holds the committed tokens; the last one, x0, is "pending": not yet in either cache.
  - the target cache holds every committed token but x0; the draft cache the same, except that after a fully
    accepted block the last draft d_K is pending for the draft as well (fed together with x0 next round).
Each round: K draft forwards (one token each), one target forward over [x0, d_1..d_K] with logits_to_keep=K+1,
the accept/reject rule on the device, and a single host sync to learn how far each row advanced.
"""

from __future__ import annotations

import time

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .kv_slots import KVSlots
from .processors import BatchProcessors, apply_processors
from .stats import RowStats, SpeculativeStats
from .verify import greedy_verify, place_next_token, speculative_verify


def _pad_vocab(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Pad logits `[..., V]` to `[..., size]` with -inf: ids a model lacks get probability 0 (and processors that
    index scores by token id stay in range when the other model's ids appear in the prefix)."""
    extra = size - logits.shape[-1]
    return logits if extra <= 0 else torch.nn.functional.pad(logits, (0, extra), value=float("-inf"))


def _split_stopping_criteria(stopping_criteria, max_length: int, eos_token_id):
    """Max length and EOS are handled in vectorised form; anything else is called once per accepted token."""
    eos_ids = [] if eos_token_id is None else torch.as_tensor(eos_token_id).flatten().tolist()
    others = StoppingCriteriaList()
    for criterion in stopping_criteria or []:
        if isinstance(criterion, MaxLengthCriteria):
            max_length = min(max_length, criterion.max_length)
        elif isinstance(criterion, EosTokenCriteria):
            eos_ids += criterion.eos_token_id.flatten().tolist()
        else:
            others.append(criterion)
    return max_length, sorted(set(int(e) for e in eos_ids)), others


@torch.no_grad()
def speculative_decode(
    target,
    draft,
    input_ids: torch.Tensor,  # [B, P] left-padded
    *,
    num_draft_tokens: int,
    do_sample: bool,
    max_length: int,
    logits_processor=(),
    stopping_criteria=None,
    attention_mask: torch.Tensor | None = None,  # [B, P]
    eos_token_id=None,
    pad_token_id: int | None = None,
    target_cache=None,
    draft_cache=None,
    streamer=None,
    draft_confidence_threshold: float | None = None,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Generate with `draft` proposing and `target` verifying. Returns (sequences [B, P + new], stats).

    With `draft_confidence_threshold`, a round drafts up to K tokens and stops early once, in every row, the draft
    gave its latest token less than that probability (dynamic lookahead; costs one host sync per draft token).
    Exactness is unaffected: whether to draft position j depends only on the prefix before j.
    """
    started = time.perf_counter()
    device = target.device
    input_ids = input_ids.to(device)
    B, P = input_ids.shape
    K = num_draft_tokens
    mask0 = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device, torch.long)
    if not bool(mask0[:, -1].all()):
        raise ValueError(
            "Right padding detected (attention_mask is 0 at the end of a row): speculative generation needs "
            "left-padded prompts; set tokenizer.padding_side = 'left'."
        )
    max_length, eos_ids, other_criteria = _split_stopping_criteria(stopping_criteria, max_length, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    eos_tensor = torch.tensor(eos_ids, dtype=torch.long, device=device)
    processors = BatchProcessors(logits_processor, B)
    # Shared vocabulary of different sizes (padded embeddings): both distributions live on the larger id range.
    V = max(target.config.get_text_config().vocab_size, draft.config.get_text_config().vocab_size)
    end = max(max_length, P)  # every row stops at length `end`

    stats = SpeculativeStats(num_draft_tokens=K, per_row=[RowStats() for _ in range(B)])
    stats.proposed_at_position = [0] * K
    stats.accepted_at_position = [0] * K
    out_seq = torch.full((B, end), pad, dtype=torch.long, device=device)
    out_seq[:, :P] = input_ids
    final_len = [P] * B
    if end <= P:
        return out_seq[:, :P], stats

    # --- prefill both caches with the prompt minus its last token (left padding = holes) ---
    tgt, drf = KVSlots(target, target_cache), KVSlots(draft, draft_cache)
    for kv in (tgt, drf):
        kv.start(B)
    if P > 1:
        prefix_has_tokens = mask0[:, -2].tolist()  # left padding: the prefix is non-empty iff its last slot is valid
        for kv in (tgt, drf):
            kv.forward(input_ids[:, :-1], mask0[:, :-1], logits_to_keep=1)
            kv.last_valid = [P - 2 if has else -1 for has in prefix_has_tokens]

    seq = torch.full((B, end + K + 1), pad, dtype=torch.long, device=device)  # committed tokens + draft scratch
    seq[:, :P] = input_ids
    lengths = [P] * B  # host: committed length C_b of each active row
    rows = list(range(B))  # original batch index of each active row
    draft_in, draft_in_valid = input_ids[:, -1:], torch.ones(B, 1, dtype=torch.long, device=device)

    while rows:
        Bc = len(rows)
        k = min(K, max(end - n for n in lengths) - 1)  # never draft past the last row's budget
        C = torch.tensor(lengths, device=device)  # [Bc]

        # --- draft k tokens autoregressively, each from the processed draft distribution q_j ---
        drafts, draft_probs = [], []
        draft_slots_before = drf.num_slots
        width = draft_in.shape[1]
        tokens, valid = draft_in, draft_in_valid
        for j in range(k):
            logits = _pad_vocab(drf.forward(tokens, valid, logits_to_keep=1)[:, -1].to(device), V)  # [Bc, V]
            scores = apply_processors(processors, seq, [n + j for n in lengths], logits, rows)  # [Bc, V]
            if do_sample:
                q = torch.softmax(scores, dim=-1)  # [Bc, V]
                token = torch.multinomial(q, num_samples=1).squeeze(1)  # [Bc]
                draft_probs.append(q)
            else:
                token = scores.argmax(dim=-1)  # [Bc]
            seq.scatter_(1, (C + j)[:, None], token[:, None])
            drafts.append(token)
            tokens, valid = token[:, None], torch.ones(Bc, 1, dtype=torch.long, device=device)
            if draft_confidence_threshold is not None and j + 1 < k:
                probs = q if do_sample else torch.softmax(scores, dim=-1)  # [Bc, V]
                confidence = probs.gather(1, token[:, None]).squeeze(1)  # [Bc] q(d_{j+1})
                if bool((confidence < draft_confidence_threshold).all()):
                    k = j + 1
                    break
        drafts = torch.stack(drafts, dim=1) if drafts else seq[:, :0]  # [Bc, k]
        steps = torch.arange(k + 1, device=device)  # [k+1]

        # --- one target pass over [x0, d_1..d_k] scores all k+1 positions ---
        target_slots_before = tgt.num_slots
        stats.target_cache_slots = max(stats.target_cache_slots, target_slots_before + k + 1)
        x0 = seq.gather(1, (C - 1)[:, None])  # [Bc, 1]
        logits = tgt.forward(torch.cat([x0, drafts], 1), torch.ones(Bc, k + 1, device=device), k + 1)
        logits = _pad_vocab(logits, V)  # [Bc, k+1, V]
        Vt = logits.shape[-1]
        scores = logits  # [Bc, k+1, V]
        if len(processors):
            scores = apply_processors(
                processors,
                seq.repeat_interleave(k + 1, dim=0),
                [n + j for n in lengths for j in range(k + 1)],
                logits.reshape(Bc * (k + 1), Vt),
                [r for r in rows for _ in range(k + 1)],
            ).view(Bc, k + 1, Vt)

        if do_sample:
            p = torch.softmax(scores, dim=-1)  # [Bc, k+1, V]
            q = torch.stack(draft_probs, dim=1) if draft_probs else p[:, :0]  # [Bc, k, V]
            uniform = torch.rand(Bc, k, device=device)
            exp_noise = torch.empty(Bc, Vt, device=device).exponential_()
            num_accepted, next_token = speculative_verify(drafts, q, p, uniform, exp_noise)
        else:
            num_accepted, next_token = greedy_verify(drafts, scores.argmax(dim=-1))
        new = place_next_token(drafts, num_accepted, next_token)  # [Bc, k+1]

        # --- stop on budget and EOS, vectorised; write the new tokens after each row's committed prefix ---
        keep = torch.minimum(num_accepted + 1, end - C)  # [Bc]
        hit_eos = torch.zeros_like(keep)  # [Bc]
        if len(eos_ids):
            is_eos = torch.isin(new, eos_tensor) & (steps[None] < keep[:, None])  # [Bc, k+1]
            hit_eos = is_eos.any(1).long()
            first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, k + 1)  # [Bc]
            keep = torch.minimum(keep, first_eos)
        seq.scatter_(1, C[:, None] + steps[None], new)
        # the round's one host sync
        host = torch.cat([num_accepted[:, None], keep[:, None], hit_eos[:, None], new], dim=1).tolist()

        accepted, kept = [h[0] for h in host], [h[1] for h in host]
        done = [lengths[i] + kept[i] >= end or bool(host[i][2]) for i in range(Bc)]
        if len(other_criteria):
            _check_other_criteria(other_criteria, seq, lengths, kept, done)

        # --- bookkeeping: stats, streamer, lengths ---
        stats.target_forward_passes += 1
        for i, row in enumerate(rows):
            rs = stats.per_row[row]
            rs.draft_tokens_proposed += k
            rs.draft_tokens_accepted += min(accepted[i], kept[i])
            rs.target_forward_passes += 1
            rs.new_tokens += kept[i]
            for j in range(min(accepted[i] + 1, k)):
                stats.proposed_at_position[j] += 1
            for j in range(min(accepted[i], kept[i])):
                stats.accepted_at_position[j] += 1
            lengths[i] += kept[i]
        if streamer is not None:
            streamer.put(torch.tensor(host[0][3 : 3 + kept[0]]))

        # --- caches: rejected slots become holes, trailing holes are cropped ---
        tgt.invalidate_tail(target_slots_before, steps[None] <= num_accepted[:, None])
        tgt.last_valid = [target_slots_before + a for a in accepted]
        if k > 1:
            drf.invalidate_tail(draft_slots_before + width, steps[None, 1:k] <= num_accepted[:, None])
        drf.last_valid = [draft_slots_before + width - 1 + min(a, k - 1) for a in accepted] if k else drf.last_valid
        # next round the draft is fed x0 (and d_k too where the whole block was accepted: it never saw d_k)
        if k and any(a == k for i, a in enumerate(accepted) if not done[i]):
            last_draft = drafts[:, -1:]
            draft_in = torch.cat([last_draft, next_token[:, None]], dim=1)  # [Bc, 2]
            draft_in_valid = torch.cat([(num_accepted == k)[:, None].long(), torch.ones_like(last_draft)], dim=1)
        else:
            draft_in, draft_in_valid = next_token[:, None], torch.ones(Bc, 1, dtype=torch.long, device=device)

        # --- finished rows leave the batch ---
        if any(done):
            for i in (i for i in range(Bc) if done[i]):
                out_seq[rows[i], : lengths[i]] = seq[i, : lengths[i]]
                final_len[rows[i]] = lengths[i]
            alive = [i for i in range(Bc) if not done[i]]
            rows = [rows[i] for i in alive]
            if not rows:
                break
            alive_t = torch.tensor(alive, device=device)
            seq, draft_in, draft_in_valid = seq[alive_t], draft_in[alive_t], draft_in_valid[alive_t]
            lengths = [lengths[i] for i in alive]
            for kv in (tgt, drf):
                kv.select_rows(alive_t, alive)
        else:
            tgt.crop_to_last_valid()
            drf.crop_to_last_valid()

    if streamer is not None:
        streamer.end()
    stats.draft_forward_passes = drf.forward_passes - (1 if P > 1 else 0)
    stats.draft_tokens_proposed = sum(r.draft_tokens_proposed for r in stats.per_row)
    stats.draft_tokens_accepted = sum(r.draft_tokens_accepted for r in stats.per_row)
    stats.new_tokens = sum(r.new_tokens for r in stats.per_row)
    stats.elapsed_s = time.perf_counter() - started
    stats.target_input_tokens = tgt.input_slots
    stats.draft_input_tokens = drf.input_slots
    return out_seq[:, : max(final_len)], stats


def _check_other_criteria(criteria, seq, lengths, kept, done) -> None:
    """Call non-EOS stopping criteria after every accepted token, truncating `kept` where one fires (in place)."""
    for t in range(max(kept)):
        live = [i for i in range(len(kept)) if t < kept[i]]
        by_len: dict[int, list[int]] = {}
        for i in live:
            by_len.setdefault(lengths[i] + t + 1, []).append(i)
        for length, idx in by_len.items():
            fired = criteria(seq[torch.tensor(idx, device=seq.device), :length], None).tolist()
            for i, f in zip(idx, fired):
                if f and kept[i] > t + 1:
                    kept[i] = t + 1
                if f:
                    done[i] = True
