"""Tokens per target pass with token trees against the chain at the same number of draft forwards per round.

Methods: "chain" (K drafts); "tree" (SHAPES[K] as `draft_tree=`: its budget per depth, each row's likeliest nodes,
trees/likeliest_fill.py); "fixed" (the same branching as a fixed topology, a `TreeShape`); "likeliest" (the
planner's fixed tree with as many nodes, `tree_planner.best_tree` at acceptance 0.9 and runner-up acceptance 0.4; its
shape as [parents, ranks]).
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
import sys
import time
from pathlib import Path

import torch

from speculoos_hf import enable_speculative
from speculoos_hf.bench.machine import machine_info
from speculoos_hf.bench.report import run_record
from speculoos_hf.trees.tree import TreeShape

SHAPES = {  # depth K: the tree's branching per depth (runner-ups at the shallow depths)
    4: (3, 2, 1, 1),
    6: (3, 2, 2, 1, 1, 1),
    8: (3,) + (1,) * 7,  # a budget of 3 nodes per depth: the first candidates' chain and the two likeliest others
    16: (2, 2) + (1,) * 14,
}


def likeliest(depth: int, alpha: float = 0.9, runner_up: float = 0.4):
    """The planner's tree with as many nodes as SHAPES[depth]'s: the likeliest nodes at a first-candidate acceptance
    `alpha` and a runner-up acceptance `runner_up` (tree_planner.best_tree)."""
    from speculoos_hf.trees.tree import TreeShape
    from speculoos_hf.trees.tree_planner import best_tree

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
    from speculoos_hf.glue.models import load_pair

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


def run(target, ids, tokens: int, sampling: bool, seed: int, profile=None, draft=None, **kw) -> dict:
    """One generate() call: new tokens, target passes, draft forwards, seconds; with a machine `profile`, the cost
    model times with it and every forward is priced from it (`simulated_machine`): simulated seconds too."""
    from contextlib import ExitStack

    from speculoos_hf.pacing.simulated_machine import ForwardPricer, simulated_machine

    settings = dict(do_sample=True, temperature=0.7, top_k=0) if sampling else dict(do_sample=False)
    torch.manual_seed(seed)
    started = time.perf_counter()
    with ExitStack() as stack:
        pricer = None
        if profile is not None:
            stack.enter_context(simulated_machine(profile))
            pricer = stack.enter_context(ForwardPricer(profile, target, [draft]))
        out = target.generate(ids, max_new_tokens=tokens, **settings, **kw, **({"draft_model": draft} if draft else {}))
    s = getattr(target, "speculative_stats", None) if draft is not None or kw else None
    new = int(out.shape[1] - ids.shape[1]) if s is None else s.new_tokens
    row = {"new_tokens": new, "target_passes": new if s is None else s.target_forward_passes,
           "draft_forwards": 0 if s is None else s.draft_forward_passes,
           "seconds": round(time.perf_counter() - started, 2)}
    if pricer is not None:
        row["simulated_s"] = pricer.seconds
    return row


def summed(rows: list[dict]) -> dict:
    keys = ("new_tokens", "target_passes", "draft_forwards", "seconds") + (("simulated_s",) if "simulated_s" in rows[0]
                                                                            else ())
    total = {k: sum(r[k] for r in rows) for k in keys}
    total["tokens_per_pass"] = round(total["new_tokens"] / total["target_passes"], 3)
    total["draft_forwards_per_round"] = round(total["draft_forwards"] / total["target_passes"], 3)
    if "simulated_s" in total:
        total["simulated_tok_s"] = round(total["new_tokens"] / total["simulated_s"], 3)
    return total


def simulate(args, target, draft, batch, report) -> None:
    """The plain call with trees ("auto") and without (draft_tree=False) against the target alone, every forward
    priced from the machine profile `args.simulate` (the cost model times with it too)."""
    from speculoos_hf.pacing.simulated_machine import MachineProfile

    profile = MachineProfile.load(args.simulate)
    done = {(r["method"], r["mode"]) for r in report["results"]}
    methods = {"target": {}, "plain_chain": dict(draft=draft, draft_tree=False, draft_quantization=None),
               "plain": dict(draft=draft, draft_quantization=None)}
    for sampling in [m == "sampling" for m in args.modes]:
        mode = "T=0.7" if sampling else "greedy"
        for name, kw in methods.items():
            if (name, mode) in done:
                continue
            seeds = range(args.seeds) if sampling else range(1)
            rows = [run(target, ids, args.tokens, sampling, seed, profile=profile, **kw) for ids in batch
                    for seed in seeds]
            report["results"].append({"method": name, "mode": mode, **summed(rows)})
            print(json.dumps(report["results"][-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps(report, indent=1) + "\n")


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
    parser.add_argument("--methods", nargs="+", choices=("chain", "tree", "fixed", "likeliest"),
                        default=["chain", "tree", "fixed", "likeliest"])
    parser.add_argument("--branching", type=int, nargs="+", help="the tree's branching per depth (its length is the "
                        "depth; instead of SHAPES[depth] for that depth)")
    parser.add_argument("--out", type=Path, help="JSON written after every configuration (and resumed from)")
    parser.add_argument("--simulate", type=Path, help="a machine profile: the plain call with and without trees "
                        "against the target alone, in simulated tok/s (instead of the chain/tree comparison)")
    args = parser.parse_args()
    torch.set_num_threads(1 if args.pair == "tiny" else 2)  # tiny models: threads only add overhead
    dtype = getattr(torch, args.dtype)
    target, draft, tokenizer = tiny_pair() if args.pair == "tiny" else reference_pair(dtype)
    batch = prompts("edit" if args.lookup else "code", args.prompts, tokenizer)
    report = {**run_record("python " + " ".join(sys.argv)), "pair": args.pair, "lookup": args.lookup,
              "dtype": args.dtype, "tokens": args.tokens, "prompts": args.prompts, "seeds": args.seeds,
              "machine": machine_info(None, args.dtype), "results": []}
    if args.out and args.out.exists():  # resume: keep what an earlier run of the same settings measured
        report["results"] = json.loads(args.out.read_text())["results"]
    if args.simulate:
        report["profile"] = str(args.simulate)
        return simulate(args, target, draft, batch, report)
    if args.branching:
        SHAPES[len(args.branching)] = tuple(args.branching)
    done = {(r["depth"], tuple(r["shape"] or ()) if r["method"] == "tree" else None, r["method"], r["mode"])
            for r in report["results"]}
    for depth in args.depths:
        shape = SHAPES[depth]
        for sampling in [m == "sampling" for m in args.modes]:
            for name, tree in (("chain", False), ("tree", shape), ("fixed", TreeShape.from_branching(shape)),
                               ("likeliest", likeliest(depth))):
                mode = "T=0.7" if sampling else "greedy"
                if (depth, shape if name == "tree" else None, name, mode) in done or name not in args.methods:
                    continue
                kw = dict(num_draft_tokens=depth, draft_tree=tree)
                # the int8 copy with its full head in every method: "auto" would choose a reduced head after a few
                # calls, and the methods run later would draft with another draft
                kw.update(prompt_lookup_num_tokens=depth) if args.lookup else kw.update(draft=draft,
                                                                                       draft_quantization="int8")
                seeds = range(args.seeds) if sampling else range(1)
                rows = [run(target, ids, args.tokens, sampling, seed, **kw) for ids in batch for seed in seeds]
                described = None if tree is False else list(tree) if isinstance(tree, tuple) else [
                    list(tree.parents), list(tree.ranks)] if name == "likeliest" else list(shape)
                report["results"].append({"depth": depth, "shape": described, "method": name,
                                          "mode": mode, **summed(rows)})
                print(json.dumps(report["results"][-1]), flush=True)
                if args.out:  # after every configuration: a long run that stops keeps what it measured
                    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
