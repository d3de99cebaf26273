"""Batch 4 on the real clock: the target's own batched generate() against the plain call, greedy and T=0.7 calls
alternated `--repeat` times in one process (so a later call starts from what earlier ones measured, as in a
server), with each plain call's round trace summed by phase.

    python benchmarks/batch_alternated.py --dtype bfloat16 --out benchmarks/epyc-avx512-bf16/batch4_alternated_bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import torch

from speculoos_hf import enable_speculative
from speculoos_hf.bench.machine import machine_info
from speculoos_hf.bench.report import run_record
from speculoos_hf.glue.models import load_pair
from speculoos_hf.loop.trace import PHASES


def batch(tokenizer, n: int) -> dict:
    """The first n shipped code prompts, chat-formatted and left-padded."""
    texts = json.loads(resources.files("speculoos_hf").joinpath("prompts", "default.json").read_text())[:n]
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": t["text"] if isinstance(t, dict) else t}],
                                           add_generation_prompt=True, tokenize=False) for t in texts]
    tokenizer.padding_side = "left"
    return tokenizer(chats, return_tensors="pt", padding=True)


def call(target, draft, enc, tokens: int, sample: bool, pad_id: int) -> dict:
    """One generate() call (the target alone where `draft` is None): tok/s, and the plain call's counters."""
    settings = dict(do_sample=True, temperature=0.7, top_k=0) if sample else dict(do_sample=False)
    torch.manual_seed(0)
    started = time.perf_counter()
    out = target.generate(**enc, max_new_tokens=tokens, pad_token_id=pad_id, **settings,
                          **({} if draft is None else {"draft_model": draft}))
    seconds = time.perf_counter() - started
    new = int((out[:, enc["input_ids"].shape[1]:] != pad_id).sum())
    row = {"mode": "T=0.7" if sample else "greedy", "tokens": new, "seconds": round(seconds, 3),
           "tok_s": round(new / seconds, 3)}
    if draft is not None:
        s = target.speculative_stats
        row.update(passes=s.target_forward_passes, proposed=s.draft_tokens_proposed, accepted=s.draft_tokens_accepted,
                   draft=s.draft_quantization,
                   phases_s={p: round(sum(getattr(r, p) for r in s.trace), 3) for p in PHASES})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    target, draft, tokenizer = load_pair(dtype=getattr(torch, args.dtype))
    target = enable_speculative(target)
    enc = batch(tokenizer, args.batch)
    report = {**run_record("python " + " ".join(sys.argv)), "machine": machine_info(None, args.dtype),
              "batch": args.batch, "tokens": args.tokens, "results": []}
    for rep in range(args.repeat):
        for sample in (False, True):
            alone, plain = (call(target, d, enc, args.tokens, sample, tokenizer.pad_token_id) for d in (None, draft))
            mode = alone["mode"]
            alone.update(method=f"target {mode}, call {rep + 1}", ratio=1.0)
            plain.update(method=f"plain call {mode}, call {rep + 1}", ratio=round(plain["tok_s"] / alone["tok_s"], 3))
            report["results"] += [alone, plain]
            print(json.dumps(plain), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
