"""Speculoos demo: the same prompt through the target alone and through speculative decoding, timed side by side.

    python examples/demo.py                                   # offline reference pair (Qwen2.5-Coder 1.5B <- 0.5B)
    python examples/demo.py --target Qwen/Qwen2.5-Coder-7B-Instruct --draft Qwen/Qwen2.5-Coder-0.5B-Instruct
"""

from __future__ import annotations

import argparse
import time

import torch

from speculoos_hf import enable_speculative
from speculoos_hf.drafters import int8_draft
from speculoos_hf.glue.models import REFERENCE_DRAFT, REFERENCE_TARGET, load_model, load_tokenizer


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=REFERENCE_TARGET, help="hub id, local directory or offline alias")
    p.add_argument("--draft", default=REFERENCE_DRAFT, help="hub id, local directory or offline alias")
    p.add_argument("--prompt", default="Write a Python function that returns the n-th prime number.")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--k", type=int, default=10, help="draft tokens per round (at most, with --confidence)")
    p.add_argument("--confidence", type=float, default=0.6,
                   help="dynamic lookahead: stop drafting below this draft probability (0 = always draft K)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--no-draft-int8", action="store_true", help="on CPU, keep the draft unquantised")
    args = p.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    print(f"loading target {args.target} and draft {args.draft} ({args.dtype}) ...", flush=True)
    target = enable_speculative(load_model(args.target, dtype=dtype))
    draft = load_model(args.draft, dtype=dtype)
    if not args.no_draft_int8 and draft.device.type == "cpu":
        draft = int8_draft(draft)  # cheaper drafts change speed only, never the output distribution
        print("draft quantised to int8 for CPU (--no-draft-int8 to keep it as loaded)")
    tokenizer = load_tokenizer(args.target)
    text = args.prompt
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt")
    common = dict(attention_mask=enc.attention_mask, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    target.generate(enc.input_ids, draft_model=draft, max_new_tokens=4, attention_mask=enc.attention_mask)  # warm-up

    for mode, kwargs in (
        ("greedy", dict(do_sample=False)),
        (f"sampling T={args.temperature}", dict(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0)),
    ):
        torch.manual_seed(0)
        base, t_base = timed(lambda: target.generate(enc.input_ids, **common, **kwargs))
        torch.manual_seed(0)
        spec, t_spec = timed(
            lambda: target.generate(
                enc.input_ids, draft_model=draft, num_draft_tokens=args.k,
                draft_confidence_threshold=args.confidence or None, **common, **kwargs,
            )
        )
        stats = target.speculative_stats
        n_base, n_spec = base.shape[1] - enc.input_ids.shape[1], spec.shape[1] - enc.input_ids.shape[1]
        print(f"\n=== {mode} ===")
        print(f"--- target alone: {n_base} tokens in {t_base:.1f} s ({n_base / t_base:.2f} tokens/s)")
        print(tokenizer.decode(base[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
        print(f"--- speculoos K<={args.k} conf {args.confidence:g}: {n_spec} tokens in {t_spec:.1f} s ({n_spec / t_spec:.2f} tokens/s)")
        print(tokenizer.decode(spec[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
        print(f"--- speedup {(n_spec / t_spec) / (n_base / t_base):.2f}x; {stats}")
        if mode == "greedy":
            same = torch.equal(base, spec)
            print(f"--- identical to the target's greedy output: {same}")
            if not same and dtype != torch.float32:
                n = min(base.shape[1], spec.shape[1])
                diff = (base[0, :n] != spec[0, :n]).nonzero()
                first = (int(diff[0]) if len(diff) else n) - enc.input_ids.shape[1]
                print(
                    f"    (first difference at new token {first}: in {args.dtype}, scoring several tokens in one pass "
                    "rounds differently from one at a time, so exact ties can flip; --dtype float32 is bitwise equal)"
                )


if __name__ == "__main__":
    main()
