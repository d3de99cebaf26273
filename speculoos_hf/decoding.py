"""The speculative decoding loop, one round at a time: propose, score, verify, apply stops, commit, roll back,
retire finished rows. Each step is a function of its own; the drafter is reached only through `Drafter`.

Invariants per live row i (committed length C_i counts the prompt, padding included, plus the new tokens):
  - `state.seq[i, :C_i]` holds the committed tokens; the last one, x0, is not yet in the target's cache.
  - the target cache holds every committed token but x0 (rejected drafts are masked holes, see kv_slots.py).
A round: the drafter proposes up to k tokens per row, one target forward over [x0, d_1..d_k] scores all k+1
positions (logits_to_keep=k+1), the accept/reject rule runs on the device, and a single host sync tells how far
each row advanced.

Lockstep: while the user's own logits processors or stopping criteria are present (batch > 1), every row commits
the same number of tokens per round and no row leaves the batch, so those objects see what stock generate() shows
them: the whole batch, in its own row order, at one length. Built-in processors keep the per-prefix path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .drafters.base import Drafter, Proposal, RoundOutcome
from .drafters.model import pad_vocab
from .kv_slots import KVSlots
from .lookahead import CostModelLookahead
from .placement import input_device
from .processors import BatchProcessors, apply_processors
from .state import DecodeContext, DecodeState
from .stats import RowStats, SpeculativeStats
from .timing import Stopwatch
from .verify import block_verify, greedy_verify, place_next_token, speculative_verify


@dataclass
class Stops:
    """How rows end: the vectorised ones (length budget, EOS ids) and the user's criteria, called per token."""

    eos: torch.Tensor  # [E] long
    others: StoppingCriteriaList
    pad: int
    lockstep: bool  # user objects present: rows advance together and stay in the batch

    @property
    def has_eos(self) -> bool:
        return self.eos.numel() > 0


@dataclass
class Verdict:
    """What verification decided for each live row. Shapes: [B] and [B, k+1]."""

    num_accepted: torch.Tensor  # [B] accepted proposal tokens
    new: torch.Tensor  # [B, k+1] accepted drafts then the replacement/bonus token


def split_stopping_criteria(stopping_criteria, max_length: int, eos_token_id):
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


def _is_users(obj) -> bool:
    """An object of the user's own (not built by transformers' generate()): it may hold per-row state."""
    return not type(obj).__module__.startswith("transformers.")


@torch.no_grad()
def speculative_decode(
    target,
    drafter: Drafter,
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
    streamer=None,
    vocab_size: int | None = None,
    lookahead: CostModelLookahead | None = None,
    block_verification: bool = False,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Generate with `drafter` proposing and `target` verifying. Returns (sequences [B, P + new], stats).

    `lookahead`: a cost model that picks each round's number of drafts (up to `num_draft_tokens`) from measured
    draft and target times and acceptance by position, and turns speculation off where it cannot pay.
    `block_verification` (sampling): the block rule of Sun et al. (2024), exact, at least as many tokens accepted."""
    started = time.perf_counter()
    device = input_device(target)
    input_ids = input_ids.to(device)
    B, P = input_ids.shape
    K = num_draft_tokens
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device, torch.long)
    _check_left_padding(mask)
    max_length, eos_ids, others = split_stopping_criteria(stopping_criteria, max_length, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    lockstep = B > 1 and (any(map(_is_users, others)) or any(map(_is_users, logits_processor)))
    stops = Stops(torch.tensor(eos_ids, dtype=torch.long, device=device), others, pad, lockstep)
    V = vocab_size or target.config.get_text_config().vocab_size
    end = max(max_length, P)
    ctx = DecodeContext(BatchProcessors(logits_processor, B), bool(do_sample), V, device, end, block_verification)
    state = _start_state(input_ids, mask, end + K + 1, pad)
    stats = SpeculativeStats(num_draft_tokens=K, per_row=[RowStats() for _ in range(B)])
    stats.proposed_at_position, stats.accepted_at_position = [0] * K, [0] * K
    out = Output(input_ids, end, pad)
    if end <= P:
        return out.sequences(), stats

    watch = Stopwatch(device)
    tgt = KVSlots(target, target_cache)
    mark = watch.start()
    prefill(tgt, state)
    prefill_span = watch.stop(mark)
    drafter.start(ctx, state)
    row_end = [end] * B  # per row: where it stops at the latest (moves in when stopped rows must run along)
    all_padding = any(f >= P for f in state.first_valid)

    while state.rows:
        remaining = max(e - n for e, n in zip(row_end_of(state, row_end), state.lengths))  # tokens left, longest row
        k = min(K, remaining - 1)
        if lookahead is not None:
            k = lookahead.choose_k(batch=state.batch_size, limit=k, remaining=remaining)
        if all_padding:  # stock scores a row that is all padding from its masked last slot alone: so do we, once
            k, all_padding = 0, False
        mark = watch.start()
        proposal = drafter.propose(state, k) if k > 0 else empty_proposal(ctx, state)
        draft_span, mark = watch.stop(mark), watch.start()
        first_slot = tgt.num_slots
        stats.target_cache_slots = max(stats.target_cache_slots, first_slot + proposal.k + 1)
        scores = score(tgt, ctx, state, proposal)  # [B, k+1, V]
        target_span = watch.stop(mark)
        verdict = verify(ctx, proposal, scores)
        outcome = apply_stops(ctx, state, stops, verdict, row_end_of(state, row_end))
        if lookahead is not None:  # after the round's sync: the timings are complete
            if prefill_span is not None:
                lookahead.observe_prefill(watch.seconds(prefill_span), (P - 1) * B, unfed=P)
                prefill_span = None
            observe(lookahead, watch, draft_span, target_span, proposal, outcome, k)
        commit(state, stops, outcome, stats, streamer, proposal)
        stats.rounds_without_drafts += int(proposal.k == 0)
        roll_back(tgt, drafter, state, outcome, first_slot, proposal.k)
        retire_finished(state, stops, outcome, out, tgt, drafter, row_end)

    if streamer is not None:
        streamer.end()
    _finish_stats(stats, tgt, drafter, started)
    if lookahead is not None:
        stats.cost_model = lookahead.summary()
    return out.sequences(), stats


# ----------------------------------------------------------------------------------------------------- the steps


def prefill(tgt: KVSlots, state: DecodeState) -> None:
    """Fill the target cache with each prompt but its last token (left padding becomes masked slots)."""
    B, P = state.batch_size, state.lengths[0]
    tgt.start(B)
    if P > 1:
        tgt.forward(state.seq[:, : P - 1], state.valid_host[:, : P - 1], logits_to_keep=1)  # host mask: no sync
        valid = state.valid_host[:, : P - 1].bool()
        idx = torch.arange(P - 1)[None, :].expand_as(valid)
        tgt.last_valid = torch.where(valid, idx, torch.full_like(idx, -1)).max(dim=1).values.tolist()
    tgt.skip_position(all_padding_rows(state))


def all_padding_rows(state: DecodeState) -> torch.Tensor:
    """[B] 1 for rows whose prompt is all padding (stock gives their new tokens positions 1, 2, ...)."""
    return torch.tensor([int(f >= state.lengths[0]) for f in state.first_valid])


def empty_proposal(ctx: DecodeContext, state: DecodeState) -> Proposal:
    """No drafts this round: the target decodes one token."""
    tokens = state.seq[:, :0]
    probs = torch.zeros(state.batch_size, 0, ctx.vocab_size, device=ctx.device) if ctx.do_sample else None
    return Proposal(tokens, probs)


def score(tgt: KVSlots, ctx: DecodeContext, state: DecodeState, proposal: Proposal) -> torch.Tensor:
    """One target forward over [x0, d_1..d_k]; processors applied at every position with its own prefix.
    Returns processed scores [B, k+1, V]."""
    B, k = state.batch_size, proposal.k
    C = state.lengths_tensor()  # [B]
    state.seq.scatter_(1, C[:, None] + torch.arange(k, device=C.device)[None, :], proposal.tokens)  # [B, k]
    x0 = state.seq.gather(1, (C - 1)[:, None])  # [B, 1]
    x0_valid = state.valid_host[torch.arange(B), torch.tensor(state.lengths) - 1][:, None]  # [B, 1] host, 0 only
    valid = torch.cat([x0_valid, torch.ones(B, k, dtype=torch.long)], dim=1)  # [B, k+1] for an all-padding prompt
    logits = pad_vocab(tgt.forward(torch.cat([x0, proposal.tokens], 1), valid, k + 1).to(ctx.device), ctx.vocab_size)
    if not len(ctx.processors):
        return logits  # [B, k+1, V]
    Vt = logits.shape[-1]
    return apply_processors(
        ctx.processors,
        state.seq.repeat_interleave(k + 1, dim=0),
        [n + j for n in state.lengths for j in range(k + 1)],
        logits.reshape(B * (k + 1), Vt),
        [r for r in state.rows for _ in range(k + 1)],
    ).view(B, k + 1, Vt)


def verify(ctx: DecodeContext, proposal: Proposal, scores: torch.Tensor) -> Verdict:
    """The accept/reject rule on the device (sampling: Leviathan/Chen; greedy: longest matching prefix)."""
    B, k = proposal.tokens.shape
    num_proposed = None if proposal.num_proposed is None else torch.tensor(proposal.num_proposed, device=scores.device)
    if ctx.do_sample:
        p = torch.softmax(scores, dim=-1)  # [B, k+1, V]
        uniform = torch.rand(B, k, device=scores.device)  # [B, k]
        exp_noise = torch.empty(B, scores.shape[-1], device=scores.device).exponential_()  # [B, V]
        if ctx.block_verification:
            num_accepted, next_token = block_verify(
                proposal.tokens, proposal.probs, p, uniform, exp_noise, num_proposed=num_proposed
            )
        else:
            num_accepted, next_token = speculative_verify(
                proposal.tokens, proposal.probs, p, uniform, exp_noise, num_proposed=num_proposed
            )
    else:
        num_accepted, next_token = greedy_verify(proposal.tokens, scores.argmax(dim=-1), num_proposed=num_proposed)
    return Verdict(num_accepted, place_next_token(proposal.tokens, num_accepted, next_token))


def apply_stops(ctx, state: DecodeState, stops: Stops, verdict: Verdict, row_end: list[int]) -> RoundOutcome:
    """How many new tokens each row keeps: budget and EOS on the device, then the round's one host sync, then the
    user's criteria token by token on the host. In lockstep every row keeps the same number."""
    B, k1 = verdict.new.shape
    steps = torch.arange(k1, device=verdict.new.device)  # [k+1]
    C = state.lengths_tensor()  # [B]
    keep = torch.minimum(verdict.num_accepted + 1, torch.tensor(row_end, device=C.device) - C)  # [B]
    no_eos = k1 + 1
    first_eos = torch.full_like(keep, no_eos)  # [B] tokens up to and including the first EOS among the kept ones
    if stops.has_eos:
        is_eos = torch.isin(verdict.new, stops.eos) & (steps[None] < keep[:, None])  # [B, k+1]
        first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, no_eos)  # [B]
    state.seq.scatter_(1, C[:, None] + steps[None], verdict.new)  # [B, k+1] after each row's committed prefix
    synced = torch.cat([verdict.num_accepted[:, None], keep[:, None], first_eos[:, None], verdict.new], 1).cpu()
    accepted, natural, eos_at = (synced[:, c].tolist() for c in range(3))  # the round's one host sync
    hit_eos = [e <= n for e, n in zip(eos_at, natural)]
    if stops.lockstep:
        # all rows keep the same number; a row that ends on EOS (or has, and is padded since) does not hold the
        # others back, but a stopped row without EOS does: stock keeps its real tokens
        holding = [natural[i] for i in range(B) if not hit_eos[i] and not (state.finished[i] and stops.has_eos)]
        n = min(holding) if holding else max(eos_at[i] for i in range(B) if hit_eos[i] and not state.finished[i])
        n = min(n, min(e - c for e, c in zip(row_end, state.lengths)))
        kept = [n] * B
        ended = [min(eos_at[i], n) for i in range(B)]  # a row's own tokens end at its EOS
        done = [(hit_eos[i] and eos_at[i] <= n) or state.lengths[i] + n >= row_end[i] for i in range(B)]
    else:
        kept = [min(n, e) for n, e in zip(natural, eos_at)]
        ended = list(kept)
        done = [hit_eos[i] or state.lengths[i] + kept[i] >= row_end[i] for i in range(B)]
    if len(stops.others):
        _check_user_criteria(stops, state, kept, done, ended)
    ended = [0 if state.finished[i] else min(ended[i], kept[i]) for i in range(B)]
    return RoundOutcome(verdict.num_accepted, accepted, kept, list(state.lengths), done=done,
                        new_tokens=synced[:, 3:], eos_at=eos_at, ended=ended)


def commit(state: DecodeState, stops: Stops, outcome: RoundOutcome, stats: SpeculativeStats, streamer,
           proposal: Proposal) -> None:
    """Move each row's committed length on; keep the host mirror in step; count; stream row 0."""
    counts = proposal.counts()
    for i, row in enumerate(state.rows):
        a, n, C = outcome.accepted[i], outcome.kept[i], state.lengths[i]
        tokens = outcome.new_tokens[i, :n]
        if stops.lockstep and stops.has_eos:  # stock pads rows that have ended while the others run on
            pad_from = 0 if state.finished[i] else min(outcome.eos_at[i], n)
            if pad_from < n:
                tokens = tokens.clone()
                tokens[pad_from:] = stops.pad
                state.seq[i, C : C + n] = tokens.to(state.seq.device)
        state.seq_host[i, C : C + n] = tokens
        state.lengths[i] = C + n
        if state.finished[i]:
            continue  # a stopped row running along (lockstep, or stock's no-EOS rule) counts no more
        if outcome.done[i]:
            state.stop_length[i] = C + outcome.ended[i]
        rs = stats.per_row[row]
        rs.draft_tokens_proposed += counts[i]
        rs.draft_tokens_accepted += min(a, outcome.ended[i])
        rs.target_forward_passes += 1
        rs.new_tokens += outcome.ended[i]
        for j in range(min(a + 1, counts[i])):
            stats.proposed_at_position[j] += 1
        for j in range(min(a, n)):
            stats.accepted_at_position[j] += 1
    stats.target_forward_passes += 1
    if streamer is not None:
        streamer.put(outcome.new_tokens[0, : outcome.kept[0]])


def roll_back(tgt: KVSlots, drafter: Drafter, state: DecodeState, outcome: RoundOutcome, first_slot: int,
              k: int) -> None:
    """Target: slots of kept drafts stay, the others become holes (x0 keeps its slot). Then the drafter's turn."""
    cached = [outcome.cached_drafts(i) for i in range(state.batch_size)]  # drafts now in the target cache
    steps = torch.arange(1, k + 1, device=tgt.device)  # [k]
    valid = steps[None] <= torch.tensor(cached, device=tgt.device)[:, None]  # [B, k]
    x0_valid = state.valid_host[torch.arange(state.batch_size), torch.tensor(outcome.old_lengths) - 1].tolist()
    last_valid = [first_slot + c if (c or x0_valid[i]) else tgt.last_valid[i] for i, c in enumerate(cached)]
    tgt.keep(first_slot + 1, valid, last_valid)
    drafter.commit(state, outcome)


def retire_finished(state: DecodeState, stops: Stops, outcome: RoundOutcome, out: "Output", tgt: KVSlots,
                    drafter: Drafter, row_end: list[int]) -> None:
    """Finished rows leave the batch (they cost nothing more). Without an EOS id, stock keeps generating a row that
    a criterion stopped until every row has stopped, then all end at the last stop: such rows run along."""
    B = state.batch_size
    for i, d in enumerate(outcome.done):
        state.finished[i] = state.finished[i] or d
    if not stops.has_eos and all(state.finished):
        final = max([state.stop_length[i] for i in range(B)] + out.stopped_lengths)
        for r in state.rows:
            row_end[r] = min(row_end[r], final)
    if stops.has_eos:
        leave = [i for i in range(B) if state.finished[i]] if not stops.lockstep or all(state.finished) else []
    else:
        leave = [i for i in range(B) if state.lengths[i] >= row_end[state.rows[i]]]
    for i in leave:
        length = min(state.lengths[i], row_end[state.rows[i]])
        out.write(state.rows[i], state.seq[i], length)
        out.stopped_lengths.append(length)
    if not leave:
        tgt.crop_to_last_valid()
        return
    gone = set(leave)
    alive = [i for i in range(B) if i not in gone]
    state.select(alive)
    if state.rows:
        alive_t = torch.tensor(alive, device=tgt.device)
        tgt.select_rows(alive_t, alive)
        drafter.select_rows(alive_t, alive)


def observe(lookahead: CostModelLookahead, watch: Stopwatch, draft_span, target_span, proposal: Proposal,
            outcome: RoundOutcome, k: int) -> None:
    """Feed the cost model this round's draft and target times and each row's acceptance. A round whose draft
    first read many committed tokens (the prompt, a stretch without drafts) times that catch-up, not a step."""
    B = len(outcome.accepted)
    if k > 0 and proposal.k > 0:
        forwards = proposal.forwards if proposal.forwards is not None else proposal.k
        seconds = watch.seconds(draft_span)
        if forwards and proposal.catch_up > 2:
            step = lookahead.draft_time(B) or 0.0
            lookahead.observe_catch_up(max(seconds - (forwards - 1) * step, 0.0), proposal.catch_up * B)
        elif forwards:
            lookahead.observe_draft(seconds / forwards, B)
    lookahead.observe_target(watch.seconds(target_span), proposal.k + 1, B)
    lookahead.observe_round(proposal.counts() if k > 0 else [0] * B, outcome.accepted)


# ----------------------------------------------------------------------------------------------------- helpers


class Output:
    """The final `[B, P + new]` sequences: finished rows are written as they leave, padded after their end."""

    def __init__(self, input_ids: torch.Tensor, end: int, pad: int):
        B, P = input_ids.shape
        self.seq = torch.full((B, max(end, P)), pad, dtype=torch.long, device=input_ids.device)
        self.seq[:, :P] = input_ids
        self.length = [P] * B
        self.stopped_lengths: list[int] = []

    def write(self, row: int, tokens: torch.Tensor, length: int) -> None:
        self.seq[row, :length] = tokens[:length]
        self.length[row] = length

    def sequences(self) -> torch.Tensor:
        return self.seq[:, : max(self.length)]


def row_end_of(state: DecodeState, row_end: list[int]) -> list[int]:
    return [row_end[r] for r in state.rows]


def _check_left_padding(mask: torch.Tensor) -> None:
    """Right padding (a 0 after a 1 in some row) is refused; all-padding rows are allowed, as in stock."""
    ends_padded = mask[:, -1] == 0  # [B]
    has_tokens = mask.any(dim=1)  # [B]
    if bool((ends_padded & has_tokens).any()):
        raise ValueError(
            "Right padding detected (attention_mask is 0 at the end of a row): speculative generation needs "
            "left-padded prompts; set tokenizer.padding_side = 'left'."
        )


def _start_state(input_ids: torch.Tensor, mask: torch.Tensor, width: int, pad: int) -> DecodeState:
    B, P = input_ids.shape
    seq = torch.full((B, width), pad, dtype=torch.long, device=input_ids.device)
    seq[:, :P] = input_ids
    valid = torch.ones(B, width, dtype=torch.long, device=input_ids.device)
    valid[:, :P] = mask
    valid_host = valid.cpu()
    first_valid = torch.where(valid_host[:, :P].bool().any(1), valid_host[:, :P].argmax(1), P).tolist()
    state = DecodeState(seq=seq, seq_host=seq.cpu(), valid=valid, valid_host=valid_host, lengths=[P] * B,
                        rows=list(range(B)), first_valid=first_valid)
    state.finished = [False] * B
    state.stop_length = [width] * B
    return state


def _check_user_criteria(stops: Stops, state: DecodeState, kept: list[int], done: list[bool], ended: list[int]) -> None:
    """Call the user's criteria after every kept token; where one fires the row is done and its own tokens end
    there (in place). Rows are grouped by length; in lockstep that is the whole batch in its own row order, as stock
    calls them."""
    seq = state.seq
    for t in range(max(kept)):
        live = [i for i in range(len(kept)) if t < kept[i] and (stops.lockstep or not state.finished[i])]
        by_len: dict[int, list[int]] = {}
        for i in live:
            by_len.setdefault(state.lengths[i] + t + 1, []).append(i)
        for length, idx in by_len.items():
            index = torch.tensor(idx, device=seq.device)
            fired = stops.others(seq[index, :length], None).tolist()  # stock passes no scores (no output_scores)
            for i, f in zip(idx, fired):
                if f and not done[i] and not state.finished[i]:
                    done[i] = True
                    ended[i] = min(ended[i], t + 1)
                    if not stops.lockstep:
                        kept[i] = min(kept[i], t + 1)
        if stops.lockstep and all(done[i] or state.finished[i] for i in range(len(kept))):
            kept[:] = [min(n, t + 1) for n in kept]
            break


def _finish_stats(stats: SpeculativeStats, tgt: KVSlots, drafter, started: float) -> None:
    stats.draft_forward_passes = getattr(drafter, "forward_passes", 0)
    stats.draft_input_tokens = getattr(drafter, "input_tokens", 0)
    stats.draft_tokens_proposed = sum(r.draft_tokens_proposed for r in stats.per_row)
    stats.draft_tokens_accepted = sum(r.draft_tokens_accepted for r in stats.per_row)
    stats.new_tokens = sum(r.new_tokens for r in stats.per_row)
    stats.elapsed_s = time.perf_counter() - started
    stats.target_input_tokens = tgt.input_slots
