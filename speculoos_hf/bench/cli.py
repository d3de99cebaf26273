"""`speculoos-bench` command line: load the pair, measure, run every method alternated, report."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from ..drafters import int8_draft
from ..generation import enable_speculative
from ..models import REFERENCE_DRAFT, REFERENCE_TARGET, load_model, load_tokenizer
from ..placement import placement_kwargs, placement_summary
from .batched import run_batches
from .machine import forward_cost, machine_info, memory_bandwidth, weight_bytes
from .methods import VARIANTS, build_methods
from .prompts import CLASS_CHOICES, encode, select_prompts
from .report import format_batches, format_table, plot, summarise, write_json
from .timing import alternate


def run(args) -> dict:
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    placement = placement_kwargs(max_memory=args.target_max_memory)  # --target-max-memory: offload the rest to disk
    if placement:
        placement["offload_folder"] = args.offload_folder or str(Path(args.out) / "offload")
    target = enable_speculative(load_model(args.target, dtype=dtype, **placement))
    draft = load_model(args.draft, dtype=dtype)
    if args.draft_noise:
        add_weight_noise(draft, args.draft_noise, args.seed)  # a poor draft: the same model, rarely agreeing
    if args.draft_int8:
        draft = int8_draft(draft)  # the same (quantised) draft serves speculoos and transformers' assisted generation
    tokenizer = load_tokenizer(args.target)
    prompts = select_prompts(args.prompts, args.prompt_class, args.num_prompts)
    classes = list(dict.fromkeys(p.cls for p in prompts))
    encoded = [encode(tokenizer, p.text, not args.raw) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.max_new_tokens if args.fixed_length else None,
        temperature=args.temperature,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        pad_token_id=pad,
    )
    methods = build_methods(args)
    draft_config = copy.deepcopy(draft.generation_config)

    bandwidth = memory_bandwidth()
    probe = encoded[0][0]
    t_cost, d_cost = forward_cost(target, probe), forward_cost(draft, probe)
    c = d_cost / t_cost
    target_bytes, draft_bytes = weight_bytes(target), weight_bytes(draft)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save_partial(tallies, done):  # figures so far, in case the run is stopped
        rows = summarise(methods, classes, tallies, c, target_bytes, draft_bytes, bandwidth)
        write_json({"prompts_done": done, "prompts": [p.text for p in prompts[:done]], "results": rows},
                   out / "partial.json")

    tallies = alternate(methods, prompts, encoded, target, draft, gen_kwargs, draft_config, args.seed, args.quiet,
                        after_prompt=save_partial)
    rows = summarise(methods, classes, tallies, c, target_bytes, draft_bytes, bandwidth)
    batch_rows = run_batches(args, target, draft, tokenizer, prompts, gen_kwargs, draft_config) if args.batch_sizes else []
    first = {cls: next(i for i, p in enumerate(prompts) if p.cls == cls) for cls in classes}
    result = {
        "target": str(args.target),
        "draft": str(args.draft),
        "dtype": args.dtype,
        "draft_int8": bool(args.draft_int8),
        "draft_noise": args.draft_noise,
        "target_placement": placement_summary(target),  # share of weights per device ("disk": offloaded)
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "prompt_classes": classes,
        "prompts": [p.text for p in prompts],
        "prompt_class_of_each": [p.cls for p in prompts],
        "machine": machine_info(bandwidth),
        "target_forward_s": t_cost,
        "draft_forward_s": d_cost,
        "cost_ratio_c": c,
        "target_weight_bytes": target_bytes,
        "draft_weight_bytes": draft_bytes,
        "results": rows,
        "batch_results": batch_rows,
        "sample_texts": {  # per class, each method's text on the class's first prompt
            cls: {
                m.name: tokenizer.decode(tallies[(m.name, cls)].outputs[0][encoded[i][0].shape[1]:], skip_special_tokens=True)
                for m in methods
            }
            for cls, i in first.items()
        },
    }
    write_json(result, out / "bench.json")
    (out / "bench.md").write_text(format_table(rows, markdown=True).strip() + "\n")
    plot(rows, out / "speedup_vs_k.png")
    if not args.quiet:
        print(
            f"\n{args.target} <- {args.draft}{' (int8)' if args.draft_int8 else ''}"
            f"{f' (noise {args.draft_noise:g})' if args.draft_noise else ''}, {args.dtype}, "
            f"{len(prompts)} prompts ({', '.join(classes)}) x {args.max_new_tokens} new tokens, "
            f"c = {c:.3f} (draft {d_cost * 1e3:.1f} ms / target {t_cost * 1e3:.1f} ms per token), "
            f"memory bandwidth {bandwidth / 1e9:.1f} GB/s"
        )
        print(format_table(rows))
        print(format_batches(batch_rows))
        print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'} and {out / 'speedup_vs_k.png'}")
    return result


@torch.no_grad()
def add_weight_noise(model, sigma: float, seed: int) -> None:
    """Add Gaussian noise of `sigma` times each weight tensor's own std, in place (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.dim() > 1:
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            param.add_((sigma * param.float().std() * noise).to(param.dtype))


def _k(text: str):
    return text if text == "auto" else int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speculoos-bench",
        description="Measured speedups of speculative decoding against the target alone and transformers' own "
        "assisted generation and prompt lookup, methods alternated prompt by prompt in one process.",
    )
    p.add_argument("--target", default=REFERENCE_TARGET, help="hub id, local directory or offline alias")
    p.add_argument("--draft", default=REFERENCE_DRAFT, help="hub id, local directory or offline alias")
    p.add_argument("--k", type=_k, nargs="*", default=[2, 3, 4, 5, 6],
                   help="speculoos draft tokens per round to try ('auto': generate()'s cost-model K)")
    p.add_argument("--assisted-k", type=int, nargs="*", default=[3], help="fixed K values for transformers' assisted generation")
    p.add_argument("--adaptive", type=float, nargs="*", default=[], help="also speculoos with these draft confidence thresholds")
    p.add_argument("--adaptive-k", type=int, default=10, help="max draft tokens per round for --adaptive")
    p.add_argument("--no-assisted", action="store_true", help="skip transformers' assisted generation")
    p.add_argument("--prompt-lookup", type=int, default=None, metavar="N",
                   help="also prompt lookup with N tokens per round: speculoos (no draft model) and transformers' own")
    p.add_argument("--max-matching-ngram", type=int, default=None, metavar="M",
                   help="max_matching_ngram_size of the prompt lookups (default: generate()'s)")
    p.add_argument("--no-transformers-lookup", action="store_true", help="skip transformers' own prompt lookup")
    for v in VARIANTS:
        p.add_argument(v.flag, action="store_true", help=v.help)
    p.add_argument("--method", nargs=2, action="append", metavar=("NAME", "JSON"),
                   help="also speculoos with these generate() kwargs, e.g. --method autoK '{\"num_draft_tokens\": \"auto\"}'"
                   " ('\"draft_model\": null' leaves the draft out); repeatable")
    p.add_argument("--modes", nargs="+", default=["greedy", "sample"], choices=["greedy", "sample"])
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--fixed-length", action="store_true", help="min_new_tokens = max_new_tokens (no early EOS)")
    p.add_argument("--prompts", default=None, help="JSON list of prompts (strings or {kind, text}); default: shipped sets")
    p.add_argument("--prompt-class", "--prompt-kind", dest="prompt_class", default="code", choices=list(CLASS_CHOICES),
                   help="prompt class: code (alias coding), copy (answers copy long spans of the prompt), prose, "
                   "both (code and copy, reported separately) or all")
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts of each class")
    p.add_argument("--raw", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="also run batched, e.g. 1 4 8")
    p.add_argument("--batch-k", type=_k, default=3, help="K for the batched runs (or auto)")
    p.add_argument("--batch-repeats", type=int, default=1, help="alternated repeats per batch size")
    p.add_argument("--draft-int8", action="store_true", help="int8 copy of the draft (CPU), used by every method")
    p.add_argument("--draft-noise", type=float, default=0.0, metavar="SIGMA",
                   help="a poor draft: Gaussian noise of SIGMA x each weight's std added to the draft's weights")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--target-max-memory", default=None, metavar="BUDGET",
                   help="offload part of the target: memory budget per device, e.g. 'cpu=1.5GiB' or '0=8GiB,cpu=20GiB'; "
                   "accelerate places what does not fit on disk (--offload-folder)")
    p.add_argument("--offload-folder", default=None, help="offloaded target weights (default: <out>/offload)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> dict:
    return run(parser().parse_args(argv))
