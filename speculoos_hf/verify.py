"""The accept/reject rule: pure batched tensor code, no host synchronisation, `torch.compile(fullgraph=True)`-able.

Sampling follows Leviathan et al. (2023) / Chen et al. (2023): draft token d_j ~ q_j is accepted with probability
min(1, p_j(d_j) / q_j(d_j)); at the first rejection the replacement is drawn from norm(max(0, p_j - q_j)); when all
K drafts are accepted a bonus token is drawn from p_K. The output then has exactly the target distribution p.

Randomness is passed in (uniforms and Exp(1) noise) so the functions are deterministic given their inputs; a
categorical draw from weights w is argmax(w / E) with E ~ Exp(1) (the exponential race, equivalent to Gumbel-max).
"""

from __future__ import annotations

import torch


def sample_from_weights(weights: torch.Tensor, exp_noise: torch.Tensor) -> torch.Tensor:
    """Categorical sample from non-negative (unnormalised) weights `[..., V]` via the exponential race."""
    return torch.argmax(weights / exp_noise, dim=-1)


def speculative_verify(
    draft_tokens: torch.Tensor,  # [B, K] long
    draft_probs: torch.Tensor,  # [B, K, V] q_j, the distributions the drafts were sampled from
    target_probs: torch.Tensor,  # [B, K+1, V] p_j, target distributions after the same processors
    uniform: torch.Tensor,  # [B, K] U(0, 1)
    exp_noise: torch.Tensor,  # [B, V] Exp(1)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (num_accepted [B] in 0..K, next_token [B]): the replacement at the first rejection, else the bonus."""
    B, K = draft_tokens.shape
    p_draft = target_probs[:, :K].gather(-1, draft_tokens[..., None]).squeeze(-1)  # [B, K]
    q_draft = draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1)  # [B, K]
    accepted = uniform * q_draft < p_draft  # [B, K]   u < p/q without dividing
    num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)  # [B]   length of the accepted prefix

    # Residual at the stopping position n: max(0, p_n - q_n), with q_K := 0 so that n == K gives the bonus p_K.
    q_padded = torch.cat([draft_probs, draft_probs.new_zeros(B, 1, draft_probs.shape[-1])], dim=1)  # [B, K+1, V]
    index = num_accepted[:, None, None].expand(B, 1, target_probs.shape[-1])  # [B, 1, V]
    p_n = target_probs.gather(1, index).squeeze(1)  # [B, V]
    q_n = q_padded.gather(1, index).squeeze(1)  # [B, V]
    residual = torch.clamp(p_n - q_n, min=0.0)  # [B, V]
    next_token = sample_from_weights(residual, exp_noise)  # [B]
    return num_accepted, next_token


def greedy_verify(
    draft_tokens: torch.Tensor,  # [B, K] long
    target_tokens: torch.Tensor,  # [B, K+1] long, argmax of the processed target scores at each position
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy rule: accept the longest prefix where draft == target argmax; next token is the target's argmax there."""
    K = draft_tokens.shape[1]
    matches = draft_tokens == target_tokens[:, :K]  # [B, K]
    num_accepted = matches.long().cumprod(dim=1).sum(dim=1)  # [B]
    next_token = target_tokens.gather(1, num_accepted[:, None]).squeeze(1)  # [B]
    return num_accepted, next_token


def place_next_token(draft_tokens: torch.Tensor, num_accepted: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
    """The K+1 candidate new tokens per row: accepted drafts, then the next token at position num_accepted. [B, K+1]"""
    out = torch.cat([draft_tokens, draft_tokens.new_zeros(draft_tokens.shape[0], 1)], dim=1)  # [B, K+1]
    return out.scatter(1, num_accepted[:, None], next_token[:, None])
