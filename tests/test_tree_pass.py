"""One forward over token trees (KVSlots.forward_tree) and the path kept after it (KVSlots.keep_marked): every node's
logits equal a clean forward of its row's prompt and path, in left-padded batches, for every architecture trees
are offered on (tree_round.TREE_MODEL_TYPES); the next round after keeping a path equals a clean forward too."""

from __future__ import annotations

import pytest
import torch

from conftest import left_pad_batch, make_prompt
from speculoos_hf.loop.kv_slots import KVSlots
from speculoos_hf.trees.tree import TokenTree, TreeShape
from test_architectures import tiny_arch


def _clean_last(model, row: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([row])).logits[0, -1].float()


ARCHS = ["llama", "qwen2", "gpt2", "qwen3", "gemma", "phi3", "olmo2", "cohere", "gpt_neox", "opt"]


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_tree_forward_equals_clean_forwards(arch):
    model = tiny_arch(arch, window=None)
    prompts = [make_prompt(n, seed=n)[0] for n in (5, 2, 4)]
    ids, mask = left_pad_batch(prompts)
    B, P = ids.shape
    kv = KVSlots(model)
    assert kv.tree_reason() is None
    kv.start(B)
    kv.forward(ids[:, : P - 1], mask[:, : P - 1], logits_to_keep=1)
    shape = TreeShape.from_branching((2, 2, 1))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (B, shape.size), generator=g)
    valid = torch.ones(B, shape.size, dtype=torch.bool)
    valid[1, 1] = False  # row 1: node 1's subtree is padding
    tree = TokenTree.from_shape(shape, tokens, valid)
    first = kv.num_slots
    fed = torch.cat([ids[:, -1:], tokens], dim=1)  # [B, N+1] root x0, then the nodes
    logits = kv.forward_tree(fed, torch.cat([torch.ones(B, 1, dtype=torch.bool), tree.valid], 1),
                             tree.pass_depth(), tree.attention(), since=first)
    paths = tree.path_tokens()
    for b in range(B):
        prompt = prompts[b].tolist()
        for i in range(shape.size + 1):
            if i and not tree.valid[b, i - 1]:
                continue
            d = int(tree.pass_depth()[b, i])
            row = prompt + paths[b, i, :d].tolist()
            assert torch.allclose(logits[b, i], _clean_last(model, row), atol=1e-4), (arch, b, i)
    # keep each row's path to a chosen node (x0 and its ancestors), then feed one more token
    chosen = [7, 8, 3]  # pass indices: row 0 depth 3 under node 2; row 1 depth 3; row 2 depth 2
    kept = torch.stack([tree.ancestors[b, chosen[b]] for b in range(B)])  # [B, N+1] root included
    kv.keep_marked(first, kept)
    nxt = torch.tensor([[11], [12], [13]])
    out = kv.forward(nxt, None, logits_to_keep=1)[:, -1]
    for b in range(B):
        d = int(tree.pass_depth()[b, chosen[b]])
        row = prompts[b].tolist() + paths[b, chosen[b], :d].tolist() + [int(nxt[b])]
        assert torch.allclose(out[b], _clean_last(model, row), atol=1e-4), (arch, b)


def test_trees_offered_on_the_checked_architectures_only():
    from speculoos_hf.trees.tree_models import TREE_MODEL_TYPES, tree_reason

    assert TREE_MODEL_TYPES == set(ARCHS)
    model = tiny_arch("bloom", window=None)  # ALiBi from the 2D mask: a 4D mask would bypass it
    assert "bloom" in tree_reason(model, KVSlots(model))
