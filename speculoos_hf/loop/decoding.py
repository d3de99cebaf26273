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

from ..drafters.base import Drafter, Proposal, RoundOutcome
from .kv_slots import KVSlots
from .logits import pad_vocab
from ..glue.options import DecodeRequest, SpeculativeOptions, UserObjects
from ..pacing.pacer import Pacer, make_pacer
from ..glue.placement import input_device
from ..glue.processors import BatchProcessors, apply_processors
from .state import DecodeContext, DecodeState
from .stats import RowStats, SpeculativeStats
from .stops import Stops, apply_stops, needs_lockstep, split_stopping_criteria
from .trace import RoundClock
from .verify import block_verify, greedy_verify, place_next_token, speculative_verify


START_WIDTH = 256  # new tokens the loop's books hold at first; they grow by doubling past it


@dataclass
class Verdict:
    """What verification decided for each live row (RoundOutcome's words). Shapes: [B] and [B, k+1]."""

    accepted: torch.Tensor  # [B] accepted drafts
    candidates: torch.Tensor  # [B, k+1] the accepted drafts then the target's token (the rest: any value)


@dataclass
class _Run:
    """One call's loop books besides the caches: the context, the live batch, how rows stop, the stats, the output."""

    ctx: DecodeContext
    state: DecodeState
    stops: Stops
    stats: SpeculativeStats
    out: "Output"
    streamer: object
    plain_first: bool  # a row is all padding: stock scores it from its masked last slot alone, so the first round too
    room: int  # columns a round may write past a row's committed tokens (its drafts, then the target's token)


@torch.no_grad()
def speculative_decode(target, drafter: Drafter, request: DecodeRequest, options: SpeculativeOptions,
                       user: UserObjects | None = None, pacer: Pacer | None = None
                       ) -> tuple[torch.Tensor, SpeculativeStats]:
    """Generate with `drafter` proposing and `target` verifying. Returns (sequences [B, P + new], stats).

    `request`: the prompts and generation settings; `user`: the call's processors, criteria, streamer and target
    cache; `pacer`: picks each round's number of drafts (default: the one `options` ask for, see pacer.py)."""
    started = time.perf_counter()
    user = user if user is not None else UserObjects()
    run = _setup(target, request, options, user)
    pacer = pacer if pacer is not None else make_pacer(options, target, drafter)
    tgt = KVSlots(target, user.cache)
    with pacer.prefilling(rows=run.state.batch_size, prompt_length=run.state.lengths[0]):
        run.stats.prefill_passes = int(prefill(tgt, run.state))
    drafter.start(run.ctx, run.state)
    from ..trees.tree_round import tree_steps  # here: tree_round builds on this module's steps

    step = tree_steps(target, tgt, drafter, options, _round)  # token trees where they apply, else the chain
    while run.state.rows:
        run.state.reserve(max(run.state.lengths) + run.room, run.stops.pad)
        begun = time.perf_counter()
        step(run, tgt, drafter, pacer)
        run.stats.trace[-1].close(time.perf_counter() - begun)  # choosing k (and a tree) took the rest
    if run.streamer is not None:
        run.streamer.end()
    _finish_stats(run.stats, tgt, drafter, pacer, started)
    return run.out.sequences(), run.stats


def _setup(target, request: DecodeRequest, options: SpeculativeOptions, user: UserObjects) -> _Run:
    """The call's books, from the request moved to the target's input device."""
    device = input_device(target)
    input_ids = request.input_ids.to(device)
    B, P = input_ids.shape
    given = request.attention_mask
    mask = torch.ones_like(input_ids) if given is None else given.to(device, torch.long)  # [B, P]
    _check_left_padding(mask)
    max_length, eos_ids, criteria = split_stopping_criteria(user.stopping_criteria, request.max_length,
                                                            request.eos_token_id)
    lockstep = needs_lockstep(B, criteria, user.logits_processor)
    stops = Stops.build(criteria, eos_ids, request.pad_token_id, lockstep, device)
    V = request.vocab_size or target.config.get_text_config().vocab_size
    end = max(max_length, P + 1)  # stock always takes one step: a criterion already met stops it after one token
    K = min(options.max_draft_tokens, end - P - 1)  # a round drafts fewer than the tokens left
    ctx = DecodeContext(BatchProcessors(user.logits_processor, B), bool(request.do_sample), V, device, end,
                        options.block_verification)
    state = _start_state(input_ids, mask, min(end, P + START_WIDTH) + K + 1, stops.pad)  # grows as rows do
    stats = SpeculativeStats(num_draft_tokens=options.reported_draft_tokens, per_row=[RowStats() for _ in range(B)])
    stats.proposed_at_position, stats.accepted_at_position = [0] * K, [0] * K
    plain_first = any(f >= P for f in state.first_valid)
    return _Run(ctx, state, stops, stats, Output(input_ids, end, stops.pad), user.streamer, plain_first, K + 1)


def _round(run: _Run, tgt: KVSlots, drafter: Drafter, pacer: Pacer) -> None:
    """One round: propose, score, verify, apply stops, commit, roll back, retire finished rows."""
    ctx, state, stats = run.ctx, run.state, run.stats
    clock = RoundClock()  # the round trace's laps (stats.trace)
    ends = run.out.ends_of(state.rows)
    k, limits = pacer.choose_k(state.rows, remaining=max(e - n for e, n in zip(ends, state.lengths)))
    if run.plain_first:
        k, run.plain_first = 0, False
    k = min(k, tgt.max_drafts)  # recurrent state: rollback depth is bounded (recurrent_state.MAX_ROLLBACK)
    clock.lap("choose_s")
    with pacer.drafting():
        proposal = pacer.propose(drafter, state, k) if k > 0 else empty_proposal(ctx, state)
    if limits is not None and k > 0:
        proposal = proposal.limited(limits)  # per-row caps from earlier rounds only (never this round's): exact
    if proposal.k > tgt.max_drafts:  # a copy carried past k (hybrid extension)
        proposal = proposal.limited([tgt.max_drafts] * state.batch_size)
    clock.lap("draft_s")
    first_slot = tgt.num_slots
    stats.target_cache_slots = max(stats.target_cache_slots, first_slot + proposal.k + 1)
    with pacer.scoring(prefill=tgt.held_tokens):  # the first pass may read the prompt too (prefill)
        scores = score(tgt, ctx, state, proposal)  # [B, k+1, V]
    clock.lap("target_s")
    verdict = verify(ctx, proposal, scores)
    clock.lap("verify_s")
    outcome = apply_stops(run.stops, state, verdict.accepted, verdict.candidates, ends)
    clock.lap("sync_s")
    pacer.after_round(proposal, outcome)
    commit(state, outcome, stats, run.streamer, proposal)
    stats.rounds_without_drafts += int(proposal.k == 0)
    roll_back(tgt, drafter, state, outcome, first_slot, proposal.k)
    retire_finished(state, run.stops, outcome, run.out, tgt, drafter)
    stats.trace.append(clock.record(proposal, outcome.accepted))


# ----------------------------------------------------------------------------------------------------- the steps


def prefill(tgt: KVSlots, state: DecodeState) -> bool:
    """Fill the target cache with each prompt but its last token (left padding becomes masked slots); where the
    cache can hold them, they ride with the first round's pass instead (one forward fewer, as stock's prefill
    gives the first token). Returns whether a forward of its own read them."""
    B, P = state.batch_size, state.lengths[0]
    tgt.start(B)
    skip = all_padding_rows(state)
    if P > 1 and tgt.can_defer and not skip.any():  # an all-padding row's positions start after its prompt
        tgt.defer(state.seq[:, : P - 1], state.valid_host[:, : P - 1])
        return False
    if P > 1:
        tgt.forward(state.seq[:, : P - 1], state.valid_host[:, : P - 1], logits_to_keep=1)  # host mask: no sync
    tgt.skip_position(skip)
    return P > 1


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
        rule = block_verify if ctx.block_verification else speculative_verify
        accepted, next_token = rule(proposal.tokens, proposal.probs, p, uniform, exp_noise, num_proposed=num_proposed)
    else:
        accepted, next_token = greedy_verify(proposal.tokens, scores.argmax(dim=-1), num_proposed=num_proposed)
    return Verdict(accepted, place_next_token(proposal.tokens, accepted, next_token))  # [B], [B, k+1]


def commit(state: DecodeState, outcome: RoundOutcome, stats: SpeculativeStats, streamer, proposal: Proposal) -> None:
    """Append each row's committed tokens (lengths and host mirror move on); count; stream row 0."""
    state.advance(outcome.tokens, outcome.committed, outcome.stopped)
    counts = proposal.counts()
    for i, row in enumerate(state.rows):
        a, own = outcome.accepted[i], outcome.own[i]
        if own == 0:
            continue  # a row that had stopped, running along (lockstep, or stock's no-EOS rule), counts no more
        rs = stats.per_row[row]
        rs.draft_tokens_proposed += counts[i]
        rs.draft_tokens_accepted += min(a, own)
        rs.target_forward_passes += 1
        rs.new_tokens += own
        for j in range(min(a + 1, counts[i])):
            stats.proposed_at_position[j] += 1
        for j in range(min(a, own)):
            stats.accepted_at_position[j] += 1
    stats.target_forward_passes += 1
    if streamer is not None:
        streamer.put(outcome.tokens[0, : outcome.committed[0]])


def roll_back(tgt: KVSlots, drafter: Drafter, state: DecodeState, outcome: RoundOutcome, first_slot: int,
              k: int) -> None:
    """Target: slots of kept drafts stay, the others become holes (x0 keeps its slot). Then the drafter's turn."""
    tgt.keep(first_slot + 1, [outcome.cached_drafts(i) for i in range(state.batch_size)])  # drafts now cached
    drafter.commit(state, outcome)


def retire_finished(state: DecodeState, stops: Stops, outcome: RoundOutcome, out: "Output", tgt: KVSlots,
                    drafter: Drafter) -> None:
    """Stopped rows leave the batch (they cost nothing more). Without an EOS id, stock keeps generating a row that
    a criterion stopped until every row has stopped, then all end at the last stop: such rows run along."""
    B = state.batch_size
    for i in range(B):
        if outcome.stopped[i]:
            out.record_stop(state.rows[i], outcome.old_lengths[i] + outcome.own[i])
    if not stops.pad_after_stop and all(state.stopped):
        out.end_at_last_stop(state.rows)
    ends = out.ends_of(state.rows)
    if stops.pad_after_stop:
        leave = [i for i in range(B) if state.stopped[i]] if not stops.lockstep or all(state.stopped) else []
    else:
        leave = [i for i in range(B) if state.lengths[i] >= ends[i]]
    for i in leave:
        out.write(state.rows[i], state.seq[i], min(state.lengths[i], ends[i]))
    if not leave:
        return
    gone = set(leave)
    alive = [i for i in range(B) if i not in gone]
    state.select(alive)
    if state.rows:
        alive_t = torch.tensor(alive, device=tgt.device)
        tgt.select_rows(alive_t, alive)
        drafter.select_rows(alive_t, alive)


# ----------------------------------------------------------------------------------------------------- helpers


class Output:
    """The batch's result by original row: where each row ends at the latest, where it stopped, and the final
    `[B, P + new]` sequences (rows are written as they leave, padded after their end; the batch ends at the last
    stop, as stock's loop does)."""

    def __init__(self, input_ids: torch.Tensor, end: int, pad: int):
        B, P = input_ids.shape
        self.seq = input_ids.to(torch.long, copy=True)  # [B, P], grown as rows are written
        self._pad = pad
        self._ends = [max(end, P)] * B  # committed length where each row leaves at the latest
        self._stops = [P] * B  # committed length where each row stopped

    def ends_of(self, rows: list[int]) -> list[int]:
        return [self._ends[r] for r in rows]

    def record_stop(self, row: int, length: int) -> None:
        self._stops[row] = length

    def end_at_last_stop(self, rows: list[int]) -> None:
        """Stock's rule without an EOS id: rows that stopped run along until the last one stops, then all end."""
        last = max(self._stops)
        for r in rows:
            self._ends[r] = min(self._ends[r], last)

    def write(self, row: int, tokens: torch.Tensor, length: int) -> None:
        self._reserve(length)
        self.seq[row, :length] = tokens[:length]

    def sequences(self) -> torch.Tensor:
        self._reserve(max(self._stops))
        return self.seq[:, : max(self._stops)]

    def _reserve(self, width: int) -> None:
        """At least `width` columns, new ones `pad` (doubling)."""
        B, S = self.seq.shape
        if width > S:
            self.seq = torch.cat([self.seq, self.seq.new_full((B, max(width, 2 * S) - S), self._pad)], dim=1)


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
    return state


def _finish_stats(stats: SpeculativeStats, tgt: KVSlots, drafter: Drafter, pacer: Pacer, started: float) -> None:
    stats.cost_model = pacer.summary()
    pacer.finish()
    stats.draft_forward_passes = drafter.forward_passes
    stats.draft_input_tokens = drafter.input_tokens
    stats.draft_tokens_proposed = sum(r.draft_tokens_proposed for r in stats.per_row)
    stats.draft_tokens_accepted = sum(r.draft_tokens_accepted for r in stats.per_row)
    stats.new_tokens = sum(r.new_tokens for r in stats.per_row)
    stats.elapsed_s = time.perf_counter() - started
    stats.target_input_tokens = tgt.input_slots
