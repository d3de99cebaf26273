"""Batched runs: for each batch size B, B prompts (left-padded) through the target's own batched generate() and
through each batched speculoos method, alternated, tokens/s ratio measured side by side."""

from __future__ import annotations

import torch

from .clock import WallClock
from .methods import batch_methods, generate, target_alone
from .prompts import encode_text


def count_new_tokens(out: torch.Tensor, prompt_len: int, eos_ids: set[int]) -> int:
    """Generated tokens of a batch, each row up to and including its first EOS (the rest is padding)."""
    total = 0
    for row in out[:, prompt_len:].tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in eos_ids:
                n = i + 1
                break
        total += n
    return total


def eos_ids_of(tokenizer, target) -> set[int]:
    eos = tokenizer.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    return ids | set(torch.as_tensor(target.generation_config.eos_token_id or []).flatten().tolist())


@torch.inference_mode()
def run_batches(args, target, draft, tokenizer, prompts, gen_kwargs, draft_config, best=None, clock=None
                ) -> list[dict]:
    """One row per (B, mode, speculoos method): its tokens/s against the target's batched generate(). Batch B takes
    the first B prompts (cycled if fewer); `best`: {mode: the fastest hand-set method at batch 1} (--batch-k best);
    `clock`: what the seconds are (bench/clock.py; default the wall clock)."""
    clock = clock or WallClock()
    from tqdm.auto import tqdm

    eos_ids = eos_ids_of(tokenizer, target)
    tokenizer.padding_side = "left"
    texts = [encode_text(tokenizer, p.text, not args.raw) for p in prompts]
    if args.batch_max_new_tokens:
        gen_kwargs = dict(gen_kwargs, max_new_tokens=args.batch_max_new_tokens,
                          min_new_tokens=args.batch_max_new_tokens if args.fixed_length else None)
    best = best or {}
    jobs = [(B, mode, [target_alone(mode)] + batch_methods(args, mode, best.get(mode)))
            for B in args.batch_sizes for mode in args.modes]
    bar = tqdm(total=sum(len(ms) for *_, ms in jobs) * args.batch_repeats, desc="batched", disable=args.quiet)
    rows = []
    for B, mode, methods in jobs:
        enc = tokenizer([texts[i % len(texts)] for i in range(B)], return_tensors="pt", padding=True)
        timing = {m.name: [0.0, 0] for m in methods}
        spec = {m.name: dict(accepted=0, proposed=0, slots=0, tokens=0) for m in methods}
        for rep in range(args.batch_repeats):
            for m in methods if rep % 2 == 0 else methods[::-1]:
                torch.manual_seed(args.seed + rep)
                with clock.timing(target, draft) as span:
                    out, st = generate(m, target, draft, enc.input_ids, draft_config,
                                       attention_mask=enc.attention_mask, **gen_kwargs)
                timing[m.name][0] += span.seconds
                timing[m.name][1] += count_new_tokens(out, enc.input_ids.shape[1], eos_ids)
                if st is not None:  # cache slots of the target vs the longest row: what the masked holes cost
                    s = spec[m.name]
                    s["accepted"] += st.draft_tokens_accepted
                    s["proposed"] += st.draft_tokens_proposed
                    s["slots"] += getattr(st, "target_cache_slots", 0) or 0
                    s["tokens"] += out.shape[1]
                    if getattr(args, "trace", False):
                        s.setdefault("traces", []).append([r.to_dict() for r in st.trace])
                bar.update()
        tps = {name: n / t for name, (t, n) in timing.items()}
        base = tps[methods[0].name]
        for m in methods[1:]:
            s = spec[m.name]
            rows.append({
                "batch_size": B,
                "mode": mode,
                "method": m.name,
                "drafter": m.drafter,
                "K": m.K,
                "target_tokens_per_s": base,
                "speculoos_tokens_per_s": tps[m.name],
                "ratio": tps[m.name] / base,
                "acceptance_rate": s["accepted"] / s["proposed"] if s["proposed"] else 0.0,
                "cache_slots_per_token": s["slots"] / s["tokens"] if s["slots"] and s["tokens"] else None,
                **({"traces": s["traces"]} if "traces" in s else {}),  # --trace: per call, its round trace
            })
    bar.close()
    return rows
