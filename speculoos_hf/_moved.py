"""Old module paths kept importable: `speculoos_hf.verify` is `speculoos_hf.loop.verify` since the layout by role."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

GROUPS = {
    "loop": ("decoding", "state", "stats", "trace", "kv_slots", "cache_layout", "recurrent_state", "verify", "stops",
             "logits"),
    "trees": ("tree", "tree_round", "tree_verify", "tree_planner", "tree_models"),
    "pacing": ("pacer", "lookahead", "k_policy", "acceptance_model", "pass_times", "robust_time", "gain", "timing",
               "simulated_machine"),
    "glue": ("generation", "options", "checks", "processors", "placement", "model_support", "models", "vocab",
             "sampler", "toy"),
    "drafters": ("suffix_cache", "suffix_cache_file"),
}
MOVED = {f"speculoos_hf.{m}": f"speculoos_hf.{group}.{m}" for group, mods in GROUPS.items() for m in mods}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and hands back the module at its new one (the same object, so patches reach it)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
