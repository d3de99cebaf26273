"""Tokens per target pass with token trees against the chain at the same number of draft forwards per round.

Methods: "chain" (K drafts), "tree" (SHAPES[K], branching per depth), "likeliest" (the planner's tree with as many
nodes, `tree_planner.best_tree` at acceptance 0.9 and runner-up acceptance 0.4; its shape as [parents, ranks]).
A chain of K drafts takes K draft forwards per round (the pending tokens' read, then K - 1 steps); a tree of depth
K takes K too (the read, then one forward per depth over that depth's nodes), so the two spend the same draft
forwards and differ in what one target pass scores. Tokens per target pass are machine-independent (the same
drafts and verdicts on any CPU); the CPU only sets how long the run takes.

    python benchmarks/tree_vs_chain.py --pair tiny --out benchmarks/epyc-avx2/tree_vs_chain_tiny.json
    python benchmarks/tree_vs_chain.py --pair reference --prompts 3 --tokens 48 --out ...json
    python benchmarks/tree_vs_chain.py --pair reference --lookup --prompts 3 --tokens 64 --out ...json  (edits)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from speculoos_hf import enable_speculative

SHAPES = {  # depth K: the tree's branching per depth (runner-ups at the shallow depths)
    4: (3, 2, 1, 1),
    6: (3, 2, 2, 1, 1, 1),
    16: (2, 2) + (1,) * 14,
}


def likeliest(depth: int, alpha: float = 0.9, runner_up: float = 0.4):
    """The planner's tree with as many nodes as SHAPES[depth]'s: the likeliest nodes at a first-candidate acceptance
    `alpha` and a runner-up acceptance `runner_up` (tree_planner.best_tree)."""
    from speculoos_hf.tree import TreeShape
    from speculoos_hf.tree_planner import best_tree

    size = TreeShape.from_branching(SHAPES[depth]).size
    return best_tree([alpha] * depth, lambda r: runner_up, nodes=size, depth=depth)[0]


def tiny_pair(seed: int = 0, noise: float = 0.15):
    """A tiny random Llama with peaked logits and a perturbed copy of it as the draft (vocabulary 64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    target = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in target.parameters():
            p.copy_(torch.randn(p.shape) * 0.2 if p.dim() >= 2 else torch.ones_like(p))
        target.lm_head.weight.mul_(4.0)
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape) * noise * p.std())
    target.generation_config.pad_token_id = 0
    return enable_speculative(target), draft, None


def reference_pair(dtype: torch.dtype):
    from speculoos_hf.models import load_pair

    target, draft, tokenizer = load_pair(dtype=dtype)
    return enable_speculative(target), draft, tokenizer


def prompts(kind: str, n: int, tokenizer) -> list[torch.Tensor]:
    """n prompts as token ids [1, L]: the shipped code prompts (or edits), chat-formatted; random ids for tiny."""
    if tokenizer is None:
        g = torch.Generator().manual_seed(1)
        return [torch.randint(1, 64, (1, 8), generator=g) for _ in range(n)]
    from importlib import resources

    name = "edit.json" if kind == "edit" else "default.json"
    texts = json.loads(resources.files("speculoos_hf").joinpath("prompts", name).read_text())
    texts = [t["text"] if isinstance(t, dict) else t for t in texts][:n]
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"] for t in texts]


def run(target, ids, tokens: int, sampling: bool, seed: int, **kw) -> dict:
    """One generate() call: new tokens, target passes, draft forwards, seconds."""
    settings = dict(do_sample=True, temperature=0.7, top_k=0) if sampling else dict(do_sample=False)
    torch.manual_seed(seed)
    started = time.perf_counter()
    target.generate(ids, max_new_tokens=tokens, **settings, **kw)
    s = target.speculative_stats
    return {"new_tokens": s.new_tokens, "target_passes": s.target_forward_passes,
            "draft_forwards": s.draft_forward_passes, "seconds": round(time.perf_counter() - started, 2)}


def summed(rows: list[dict]) -> dict:
    total = {k: sum(r[k] for r in rows) for k in ("new_tokens", "target_passes", "draft_forwards", "seconds")}
    total["tokens_per_pass"] = round(total["new_tokens"] / total["target_passes"], 3)
    total["draft_forwards_per_round"] = round(total["draft_forwards"] / total["target_passes"], 3)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=("tiny", "reference"), default="tiny")
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=2, help="sampling runs per prompt")
    parser.add_argument("--lookup", action="store_true", help="prompt lookup alone on the edit prompts")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--modes", nargs="+", choices=("greedy", "sampling"), default=["greedy", "sampling"])
    parser.add_argument("--out", type=Path, help="JSON written after every configuration (and resumed from)")
    args = parser.parse_args()
    torch.set_num_threads(1 if args.pair == "tiny" else 2)  # tiny models: threads only add overhead
    dtype = getattr(torch, args.dtype)
    target, draft, tokenizer = tiny_pair() if args.pair == "tiny" else reference_pair(dtype)
    batch = prompts("edit" if args.lookup else "code", args.prompts, tokenizer)
    report = {"pair": args.pair, "lookup": args.lookup, "dtype": args.dtype, "tokens": args.tokens,
              "prompts": args.prompts, "seeds": args.seeds, "machine": f"{platform.processor() or platform.machine()}"
              f", {torch.get_num_threads()} threads, torch {torch.__version__}",
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(), "results": []}
    if args.out and args.out.exists():  # resume: keep what an earlier run of the same settings measured
        report["results"] = json.loads(args.out.read_text())["results"]
    done = {(r["depth"], r["method"], r["mode"]) for r in report["results"]}
    for depth in args.depths:
        shape = SHAPES[depth]
        for sampling in [m == "sampling" for m in args.modes]:
            for name, tree in (("chain", False), ("tree", shape), ("likeliest", likeliest(depth))):
                mode = "T=0.7" if sampling else "greedy"
                if (depth, name, mode) in done:
                    continue
                if args.lookup:
                    kw = dict(prompt_lookup_num_tokens=depth, num_draft_tokens=depth, draft_tree=tree)
                else:
                    kw = dict(draft_model=draft, num_draft_tokens=depth, draft_tree=tree)
                seeds = range(args.seeds) if sampling else range(1)
                rows = [run(target, ids, args.tokens, sampling, seed, **kw) for ids in batch for seed in seeds]
                described = None if tree is False else list(tree) if isinstance(tree, tuple) else [
                    list(tree.parents), list(tree.ranks)]
                report["results"].append({"depth": depth, "shape": described, "method": name,
                                          "mode": mode, **summed(rows)})
                print(json.dumps(report["results"][-1]), flush=True)
                if args.out:  # after every configuration: a long run that stops keeps what it measured
                    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
