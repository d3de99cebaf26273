"""The accept/reject rules: pure batched tensor code, no host synchronisation, `torch.compile(fullgraph=True)`-able.

Token-wise (`speculative_verify`), Leviathan et al. (2023) / Chen et al. (2023): draft token d_j ~ q_j is accepted
with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection the replacement is drawn from
norm(max(0, p_j - q_j)); when all K drafts are accepted a bonus token is drawn from p_K. The output then has exactly
the target distribution p.

Block-wise (`block_verify`), Sun et al. (2024), "Block Verification Accelerates Speculative Decoding" (Algorithm 2):
the same inputs, verified jointly. With p_0 = 1 and p_i = min(1, p_{i-1} p(d_i) / q(d_i)) along the draft path,
position i (1 <= i < K) "can stop" with probability
    h_i = sum_x max(0, p_i p_i(x) - q_i(x)) / (sum_x max(0, p_i p_i(x) - q_i(x)) + 1 - p_i)
and h_K = p_K, where p_i(.) / q_i(.) are the target / draft distributions after i drafts. The number accepted is the
LARGEST i with eta_i < h_i (0 if none), and the next token is drawn from norm(max(0, p_tau p_tau(.) - q_tau(.)))
(q_K := 0: the bonus). It is exact, never accepts fewer tokens in expectation than the token-wise rule, and is
optimal among rules that see only the draft path's probabilities.

Shared conventions:
- `draft_probs=None`: deterministic proposals (q_j = one-hot(d_j)): d_j is accepted with probability p_j(d_j) and
  the replacement is drawn from norm(max(0, p_j - onehot(d_j))), i.e. p_j without d_j. No [B, K, V] one-hot is built.
- `num_proposed [B]` (optional): row b proposed only its first num_proposed[b] tokens (the rest of its row in
  `draft_tokens`/`draft_probs` is ignored, any value): those positions are never accepted, and the residual/bonus at
  position num_proposed[b] is taken as if q there were 0 (i.e. drawn from p). Identical to calling the rule on
  the truncated row with the same uniforms and noise.
- Randomness is passed in (uniforms and Exp(1) noise) so the functions are deterministic given their inputs; a
  categorical draw from weights w is argmax(w / E) with E ~ Exp(1) (the exponential race, equivalent to Gumbel-max).
"""

from __future__ import annotations

import torch


def sample_from_weights(weights: torch.Tensor, exp_noise: torch.Tensor) -> torch.Tensor:
    """Categorical sample from non-negative (unnormalised) weights `[..., V]` via the exponential race."""
    return torch.argmax(weights / exp_noise, dim=-1)


def _draft_prob_of_tokens(draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None) -> torch.Tensor:
    """q_j(d_j) [B, K]; 1 for deterministic proposals."""
    if draft_probs is None:
        return torch.ones(draft_tokens.shape, dtype=torch.float32, device=draft_tokens.device)
    return draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1)


def _proposed(draft_tokens: torch.Tensor, num_proposed: torch.Tensor | None) -> torch.Tensor:
    """[B, K] bool: position j was proposed (j < num_proposed)."""
    B, K = draft_tokens.shape
    if num_proposed is None:
        return torch.ones(B, K, dtype=torch.bool, device=draft_tokens.device)
    return torch.arange(K, device=draft_tokens.device)[None, :] < num_proposed[:, None]


def _residual(
    target_probs: torch.Tensor,  # [B, K+1, V]
    draft_tokens: torch.Tensor,  # [B, K]
    draft_probs: torch.Tensor | None,  # [B, K, V] or None (one-hot)
    position: torch.Tensor,  # [B] long in 0..K, where the next token is drawn
    scale: torch.Tensor | None,  # [B] factor on p (block rule's path probability), None for 1
    num_proposed: torch.Tensor | None,  # [B] or None (= K)
) -> torch.Tensor:
    """Weights max(0, scale * p_m - q_m) [B, V] at m = position, with q_m := 0 where m >= num_proposed (or m == K)."""
    B, K = draft_tokens.shape
    V = target_probs.shape[-1]
    p_m = target_probs.gather(1, position[:, None, None].expand(B, 1, V)).squeeze(1)  # [B, V]
    if scale is not None:
        p_m = p_m * scale[:, None].to(p_m.dtype)
    if K == 0:  # nothing proposed: the bonus
        return p_m
    limit = num_proposed if num_proposed is not None else torch.full_like(position, K)
    has_q = position < limit  # [B]   a draft distribution exists at m
    m = position.clamp(max=K - 1)  # [B]   a valid index even where has_q is False (then unused)
    if draft_probs is None:
        d_m = draft_tokens.gather(1, m[:, None])  # [B, 1]
        # q_m = onehot(d_m): max(0, s p(d) - 1) = 0 because s p(d) <= 1; every other entry keeps s p(x)
        with_q = p_m.scatter(1, d_m, 0.0)  # [B, V]
    else:
        q_m = draft_probs.gather(1, m[:, None, None].expand(B, 1, V)).squeeze(1)  # [B, V]
        with_q = torch.clamp(p_m - q_m, min=0.0)  # [B, V]
    return torch.where(has_q[:, None], with_q, p_m)  # [B, V]


def speculative_verify(
    draft_tokens: torch.Tensor,  # [B, K] long
    draft_probs: torch.Tensor | None,  # [B, K, V] q_j, the distributions the drafts were sampled from; None: one-hot
    target_probs: torch.Tensor,  # [B, K+1, V] p_j, target distributions after the same processors
    uniform: torch.Tensor,  # [B, K] U(0, 1)
    exp_noise: torch.Tensor,  # [B, V] Exp(1)
    num_proposed: torch.Tensor | None = None,  # [B] long in 0..K, or None (= K)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise rule. Returns (num_accepted [B] in 0..num_proposed, next_token [B]): the replacement at the first
    rejection, else the bonus drawn from p at position num_proposed."""
    p_draft = target_probs[:, : draft_tokens.shape[1]].gather(-1, draft_tokens[..., None]).squeeze(-1)  # [B, K]
    q_draft = _draft_prob_of_tokens(draft_tokens, draft_probs)  # [B, K]
    accepted = (uniform * q_draft < p_draft) & _proposed(draft_tokens, num_proposed)  # [B, K]   u < p/q, no divide
    num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)  # [B]   length of the accepted prefix
    residual = _residual(target_probs, draft_tokens, draft_probs, num_accepted, None, num_proposed)  # [B, V]
    next_token = sample_from_weights(residual, exp_noise)  # [B]
    return num_accepted, next_token


def block_path_probs(
    draft_tokens: torch.Tensor,  # [B, K] long
    draft_probs: torch.Tensor | None,  # [B, K, V] or None (one-hot)
    target_probs: torch.Tensor,  # [B, K+1, V]
    num_proposed: torch.Tensor | None = None,  # [B] or None (= K)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block rule's quantities: (path [B, K+1] with path[:, i] = p_i (p_0 = 1), stop [B, K] with
    stop[:, i-1] = h_i, the probability that eta_i accepts position i; 0 beyond num_proposed)."""
    B, K = draft_tokens.shape
    dtype = target_probs.dtype
    tiny = torch.finfo(dtype).tiny
    p_tok = target_probs[:, :K].gather(-1, draft_tokens[..., None]).squeeze(-1)  # [B, K] p_{i-1}(d_i)
    q_tok = _draft_prob_of_tokens(draft_tokens, draft_probs).to(dtype)  # [B, K] q_{i-1}(d_i)
    path = [torch.ones(B, dtype=dtype, device=target_probs.device)]
    for i in range(K):  # K is static: unrolled under torch.compile
        # p_i = min(1, p_{i-1} p(d_i) / q(d_i)); q == 0 (never for a sampled token) gives 1 unless p_{i-1} p(d_i) == 0
        path.append(torch.clamp(path[-1] * p_tok[:, i] / q_tok[:, i].clamp(min=tiny), max=1.0))
    path_t = torch.stack(path, dim=1)  # [B, K+1]
    after = path_t[:, 1:]  # [B, K]   p_1 .. p_K
    # w_i = sum_x max(0, p_i p_i(x) - q_i(x)) for i = 1..K-1 where q_i exists (i < num_proposed)
    if K > 1:
        P_next = target_probs[:, 1:K]  # [B, K-1, V]
        if draft_probs is None:
            d_next = draft_tokens[:, 1:]  # [B, K-1]
            p_d = P_next.gather(-1, d_next[..., None]).squeeze(-1)  # [B, K-1]
            w_q = after[:, :-1] * (P_next.sum(-1) - p_d).clamp(min=0.0)  # [B, K-1]   p_i p(d) <= 1 at d
        else:
            tmp = P_next * after[:, :-1, None]  # [B, K-1, V]   one temporary, updated in place (CPU: fewer allocations)
            w_q = tmp.sub_(draft_probs[:, 1:].to(dtype)).clamp_(min=0.0).sum(-1)  # [B, K-1]
        h_q = w_q / (w_q + 1.0 - after[:, :-1]).clamp(min=tiny)  # [B, K-1]   0/0 -> 0 (then h is irrelevant)
        h_q = torch.cat([h_q, h_q.new_zeros(B, 1)], dim=1)  # [B, K]
    else:
        h_q = after.new_zeros(B, K)
    # the last proposed position n has no q after it: h_n = p_n; positions beyond n never accept
    n = num_proposed if num_proposed is not None else torch.full((B,), K, device=draft_tokens.device)
    i_pos = torch.arange(1, K + 1, device=draft_tokens.device)[None, :]  # [1, K]
    stop = torch.where(i_pos < n[:, None], h_q, torch.where(i_pos == n[:, None], after, torch.zeros_like(after)))
    return path_t, stop


def block_verify(
    draft_tokens: torch.Tensor,  # [B, K] long
    draft_probs: torch.Tensor | None,  # [B, K, V] q_j, the distributions the drafts were sampled from; None: one-hot
    target_probs: torch.Tensor,  # [B, K+1, V] p_j, target distributions after the same processors
    uniform: torch.Tensor,  # [B, K] U(0, 1), eta_1..eta_K
    exp_noise: torch.Tensor,  # [B, V] Exp(1)
    num_proposed: torch.Tensor | None = None,  # [B] long in 0..K, or None (= K)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block verification (Sun et al. 2024). Same inputs and outputs as `speculative_verify`: (num_accepted [B] in
    0..num_proposed, next_token [B]); the accepted tokens are still the prefix draft_tokens[:, :num_accepted]."""
    B, K = draft_tokens.shape
    path, stop = block_path_probs(draft_tokens, draft_probs, target_probs, num_proposed)  # [B, K+1], [B, K]
    i_pos = torch.arange(1, K + 1, device=draft_tokens.device)[None, :]  # [1, K]
    hits = torch.cat([i_pos.new_zeros(B, 1), (uniform < stop).long() * i_pos], dim=1)  # [B, K+1]
    num_accepted = hits.amax(dim=1)  # [B]   largest i with eta_i < h_i, else 0
    scale = path.gather(1, num_accepted[:, None]).squeeze(1)  # [B]   p_tau
    residual = _residual(target_probs, draft_tokens, draft_probs, num_accepted, scale, num_proposed)  # [B, V]
    next_token = sample_from_weights(residual, exp_noise)  # [B]
    return num_accepted, next_token


def greedy_verify(
    draft_tokens: torch.Tensor,  # [B, K] long
    target_tokens: torch.Tensor,  # [B, K+1] long, argmax of the processed target scores at each position
    num_proposed: torch.Tensor | None = None,  # [B] long in 0..K, or None (= K)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy rule: accept the longest prefix where draft == target argmax; next token is the target's argmax there."""
    matches = (draft_tokens == target_tokens[:, : draft_tokens.shape[1]]) & _proposed(draft_tokens, num_proposed)
    num_accepted = matches.long().cumprod(dim=1).sum(dim=1)  # [B]
    next_token = target_tokens.gather(1, num_accepted[:, None]).squeeze(1)  # [B]
    return num_accepted, next_token


def place_next_token(draft_tokens: torch.Tensor, num_accepted: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
    """The K+1 candidate new tokens per row: accepted drafts, then the next token at position num_accepted. [B, K+1]"""
    out = torch.cat([draft_tokens, draft_tokens.new_zeros(draft_tokens.shape[0], 1)], dim=1)  # [B, K+1]
    return out.scatter(1, num_accepted[:, None], next_token[:, None])
