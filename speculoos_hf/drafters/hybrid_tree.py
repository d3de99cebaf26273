"""Token trees from the hybrid: the prompt lookup's (or suffix cache's) trie of copies and the draft model's tree,
side by side below each row's root. The copies' first tokens are tried first at the root, and the model's children
there are drawn without them (q with those tokens removed), so no candidate repeats another; exact as either tree
alone (recursive rejection sampling: a one-hot q for every copied node, the model's own q for its nodes).
"""

from __future__ import annotations

import torch

from ..loop.state import DecodeState
from ..trees.tree import TokenTree, TreePlan, join_trees
from .base import RoundOutcome
from .hybrid import HybridDrafter


class TreeHybridDrafter(HybridDrafter):
    """A `HybridDrafter` (its lookup a `TreeLookupDrafter`, its model a `TreeModelDrafter`) that also drafts trees;
    chains as ever."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._copied_nodes = 0  # the last tree's copied nodes (they come first)
        self._model_drafted = False  # the last tree has the draft model's nodes

    @property
    def copied_nodes(self) -> int:
        """The last tree's copied nodes (its first ones; the model's follow)."""
        return self._copied_nodes

    def tree_reason(self) -> str | None:
        reason = getattr(self.model, "tree_reason", None)
        return "its draft model drafts no trees (another tokenizer)" if reason is None else reason()

    def propose_tree(self, state: DecodeState, plan: TreePlan) -> TokenTree:
        """The copies' trie (up to `plan.copy_nodes` nodes) and the model's tree of `plan.shape`, joined."""
        copies = self.lookup.propose_tree(state, plan) if plan.copy_nodes else None
        self._model_drafted = plan.shape is not None
        if plan.shape is None:
            self._copied_nodes = copies.size
            return copies
        exclude = None
        if copies is not None and copies.size:
            at_root = (copies.parents == -1) & copies.valid  # [B, N1] host
            exclude = torch.where(at_root.to(copies.tokens.device), copies.tokens, -1)  # [B, N1]
        drafted = self.model.draft_tree(state, plan.shape, exclude, likeliest=plan.likeliest, top=plan.top)
        self._copied_nodes = 0 if copies is None else copies.size
        return drafted if copies is None else join_trees(copies, drafted, self.ctx.vocab_size)

    def root_distribution(self) -> torch.Tensor | None:
        """The draft model's q at each row's root in the last sampled tree (its own children's, copies aside)."""
        return self.model.root_distribution() if self._model_drafted else None

    def commit_tree(self, state: DecodeState, outcome: RoundOutcome, path: torch.Tensor) -> None:
        """The model keeps its fed nodes on the accepted path (a path through copies: none); the index grows."""
        n = self._copied_nodes
        self.model.commit_tree(state, outcome, torch.where(path >= n, path - n, -2))  # -2: a copied node
        self.lookup.commit(state, outcome)
