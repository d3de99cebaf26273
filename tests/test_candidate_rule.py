"""The choice between top and drawn candidates for sampled trees (trees/candidate_rule.py): each rule's measured
acceptance at a node, and the choice following the measurements."""

from __future__ import annotations

import torch

from speculoos_hf.trees.candidate_rule import CandidateRule, drawn_acceptance, top_acceptance


def _rows(*dists):
    return torch.tensor(dists, dtype=torch.float64)


def test_top_acceptance_is_ps_mass_on_qs_likeliest():
    p = _rows([0.35, 0.6, 0.05, 0.0])
    q = _rows([0.9, 0.1, 0.0, 0.0])
    assert torch.allclose(top_acceptance(p, q, 1), _rows(0.35))
    assert torch.allclose(top_acceptance(p, q, 2), _rows(0.95))


def test_drawn_acceptance_is_recursive_rejection_sampling():
    """q = p: the first drawn candidate is always accepted. A one-token q: min(1, p/q) at that token, then nothing
    left to draw. Two candidates: the mean over draws equals the rule's acceptance computed by hand."""
    p = _rows([0.25, 0.25, 0.25, 0.25])
    assert torch.allclose(drawn_acceptance(p, p.clone(), 2), _rows(1.0))
    assert torch.allclose(drawn_acceptance(_rows([0.3, 0.7, 0.0]), _rows([1.0, 0.0, 0.0]), 3), _rows(0.3))
    torch.manual_seed(0)
    p, q = _rows([0.5, 0.5, 0.0]), _rows([0.2, 0.2, 0.6])
    # first: 0 or 1 (q 0.2 each) accepted surely; 2 (q 0.6) never, residual (0.5, 0.5, 0), then q' = (0.5, 0.5, 0):
    # the second candidate accepted surely. Both candidates: acceptance 1 whatever is drawn.
    assert torch.allclose(drawn_acceptance(p, q, 2), _rows(1.0))
    # one candidate: 0.4 of the draws accept
    many = drawn_acceptance(p.expand(20000, 3), q.expand(20000, 3), 1)
    assert abs(float(many.mean()) - 0.4) < 0.02


def test_rule_follows_the_measured_acceptance():
    """A peaked target whose first choice the draft often misses: top candidates; a flat target the draft matches:
    drawn ones. Before any measurement: drawn (as before the rule existed)."""
    rule = CandidateRule()
    assert not rule.top
    V = 64
    p = torch.zeros(8, V, dtype=torch.float64)
    p[:, 1], p[:, 0], p[:, 2:] = 0.6, 0.35, 0.05 / (V - 2)
    q = torch.full((8, V), 0.02 / (V - 2), dtype=torch.float64)
    q[:, 0], q[:, 1] = 0.9, 0.08
    for _ in range(3):
        rule.observe(p, q, 2)
    assert rule.top
    flat = torch.full((8, V), 1.0 / V, dtype=torch.float64)
    for _ in range(20):
        rule.observe(flat, flat.clone(), 2)
    assert not rule.top
