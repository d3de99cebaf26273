"""`speculoos-bench` command line: load the pair, then either profile the machine (`--profile`) or run every
method alternated and report (`--table`: the comparison table of issue 19 from one run)."""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cli_checks import OneLineParser, int_at_least
from ..drafters import int8_draft
from ..drafters.prepared import prepared_draft
from ..glue.generation import enable_speculative
from ..glue.models import REFERENCE_DRAFT, REFERENCE_TARGET, load_model, load_tokenizer
from ..glue.placement import placement_kwargs, placement_summary
from .arg_checks import batch_k_problem, check
from .batched import run_batches
from .clock import bench_clock
from .machine import forward_cost, machine_info, memory_bandwidth, weight_bytes
from .methods import VARIANTS, build_methods
from .pass_profile import DEFAULT_M, ProfileOptions
from .profile_report import run_profile
from .prompts import CLASS_CHOICES, encode, select_prompts
from .report import command_line, format_batches, format_table, plot, run_record, summarise, write_json
from .suffix import CacheBook
from .summarize import summarize
from .table import best_hand_set, comparison_table, format_comparison
from .timing import alternate
from .trace_report import write_traces

DTYPES = ["bfloat16", "float16", "float32"]

# --table: the issue-19 comparison in one run; flags given on the command line override these
TABLE_PRESET = dict(modes=["greedy", "sample"], temperature=0.7, k=[3, 4, 6], assisted_k=[3, 4, 6], plain=True,
                    batch_sizes=[4], batch_k="best", num_prompts=1, max_new_tokens=48, batch_max_new_tokens=32)


@dataclass
class Pair:
    """The loaded models and tokenizer, and what they were loaded as."""

    target: object
    draft: object
    tokenizer: object
    dtype: str
    draft_dtype: str


def load(args) -> Pair:
    """The target (speculative generate(), placed per --target-max-memory) and the draft as the flags ask."""
    placement = placement_kwargs(max_memory=args.target_max_memory)  # --target-max-memory: offload the rest to disk
    if placement:
        placement["offload_folder"] = args.offload_folder or str(Path(args.out) / "offload")
    draft_dtype = args.draft_dtype or args.dtype
    target = enable_speculative(load_model(args.target, dtype=getattr(torch, args.dtype), **placement))
    draft = load_model(args.draft, dtype=getattr(torch, draft_dtype))
    if args.draft_noise:
        add_weight_noise(draft, args.draft_noise, args.seed)  # a poor draft: the same model, rarely agreeing
    if args.draft_int8:
        draft = int8_draft(draft)  # the same (quantised) draft serves speculoos and transformers' assisted generation
    return Pair(target, draft, load_tokenizer(args.target), args.dtype, draft_dtype)


def run(args) -> dict:
    if args.summarize:  # tables from saved result JSONs: no model is loaded
        return summarize(Path(args.summarize))
    torch.manual_seed(args.seed)
    if args.profile:
        options = ProfileOptions.from_args(args)  # validated before the models load
        pair = load(args)
        prompt = encode(pair.tokenizer, select_prompts(args.prompts, args.prompt_class, 1)[0].text, not args.raw)[0]
        draft, given = profiled_draft(args, pair)
        names = dict(**run_record(args.command), target=str(args.target), draft=str(args.draft), dtype=pair.dtype,
                     draft_dtype=pair.draft_dtype, draft_int8=bool(args.draft_int8),
                     draft_as_profiled="as given" if given is None else "as the plain call prepares it (auto)")
        return run_profile(pair.target, draft, prompt, options, names, args.quiet, given=given)
    methods = build_methods(args)
    if batch_k_problem(args, methods):
        raise SystemExit(f"--batch-k {batch_k_problem(args, methods)}")
    caches = CacheBook.of_suffix_caches(args.suffix_cache_tokens) if any(m.suffix_cache for m in methods) else None
    return run_bench(args, load(args), methods, caches)


def profiled_draft(args, pair: Pair):
    """(the draft --profile times, the draft as given where that is its prepared copy, else None): by default the
    copy the plain call drafts with (draft_quantization="auto"), unless --profile-as-given or --draft-int8."""
    if args.profile_as_given or args.draft_int8:
        return pair.draft, None
    prepared = prepared_draft(pair.draft, "auto", pair.target)
    return (prepared, pair.draft) if prepared is not pair.draft else (pair.draft, None)


def run_bench(args, pair: Pair, methods, caches) -> dict:
    target, draft, tokenizer = pair.target, pair.draft, pair.tokenizer
    prompts = select_prompts(args.prompts, args.prompt_class, args.num_prompts)
    classes = list(dict.fromkeys(p.cls for p in prompts))
    encoded = [encode(tokenizer, p.text, not args.raw) for p in prompts]
    gen_kwargs = generate_kwargs(args, tokenizer)
    draft_config = copy.deepcopy(draft.generation_config)

    bandwidth = memory_bandwidth()
    t_cost, d_cost = forward_cost(target, encoded[0][0]), forward_cost(draft, encoded[0][0])
    costs = dict(c=d_cost / t_cost, target_bytes=weight_bytes(target), draft_bytes=weight_bytes(draft),
                 bandwidth=bandwidth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save_partial(tallies, done):  # figures so far, in case the run is stopped
        rows = summarise(methods, classes, tallies, costs["c"], costs["target_bytes"], costs["draft_bytes"], bandwidth)
        write_json({"prompts_done": done, "prompts": [p.text for p in prompts[:done]], "results": rows},
                   out / "partial.json")

    clock = bench_clock(args.simulate, methods)  # --simulate: seconds from a machine profile
    tallies = alternate(methods, prompts, encoded, target, draft, gen_kwargs, draft_config, args.seed, args.quiet,
                        after_prompt=save_partial, caches=caches, clock=clock)
    rows = summarise(methods, classes, tallies, costs["c"], costs["target_bytes"], costs["draft_bytes"], bandwidth)
    batch_rows = []
    if args.batch_sizes:
        best = {m: best_hand_set(methods, tallies, m, batchable=True) for m in args.modes} if args.batch_k == "best" \
            else None
        batch_prompts = prompts if len(prompts) >= max(args.batch_sizes) else \
            select_prompts(args.prompts, args.prompt_class, None)
        batch_rows = run_batches(args, target, draft, tokenizer, batch_prompts, gen_kwargs, draft_config, best, clock)
    machine = machine_info(bandwidth, pair.dtype, pair.draft_dtype)
    table = comparison_table(methods, tallies, batch_rows)
    result = {
        **run_record(args.command),  # command, commit, date
        "target": str(args.target),
        "draft": str(args.draft),
        "dtype": pair.dtype,
        "draft_dtype": pair.draft_dtype,
        "draft_int8": bool(args.draft_int8),
        "draft_noise": args.draft_noise,
        "target_placement": placement_summary(target),  # share of weights per device ("disk": offloaded)
        "max_new_tokens": args.max_new_tokens,
        "batch_max_new_tokens": args.batch_max_new_tokens or args.max_new_tokens,
        "temperature": args.temperature,
        "prompt_classes": classes,
        "prompts": [p.text for p in prompts],
        "prompt_class_of_each": [p.cls for p in prompts],
        "machine": machine,
        "clock": clock.name,  # what the seconds are: the wall clock, or the profile --simulate names
        "target_forward_s": t_cost,
        "draft_forward_s": d_cost,
        "cost_ratio_c": costs["c"],
        "target_weight_bytes": costs["target_bytes"],
        "draft_weight_bytes": costs["draft_bytes"],
        "results": rows,
        "batch_results": batch_rows,
        "comparison": table,
        "sample_texts": sample_texts(methods, prompts, encoded, tallies, tokenizer),
    }
    if args.trace:  # before bench.json: the traces go to trace.jsonl only
        write_traces(tallies, batch_rows, out, args.quiet)
    write_reports(args, result, out)
    return result


def generate_kwargs(args, tokenizer) -> dict:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return dict(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.max_new_tokens if args.fixed_length else None,
        temperature=args.temperature,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        pad_token_id=pad,
    )


def sample_texts(methods, prompts, encoded, tallies, tokenizer) -> dict:
    """Per class, each method's text on the class's first prompt."""
    first = {}
    for i, p in enumerate(prompts):
        first.setdefault(p.cls, i)
    return {
        cls: {m.name: tokenizer.decode(tallies[(m.name, cls)].outputs[0][encoded[i][0].shape[1]:],
                                       skip_special_tokens=True) for m in methods}
        for cls, i in first.items()
    }


def write_reports(args, result: dict, out: Path) -> None:
    """bench.json, bench.md (the machine, with --table the comparison table, then one table per class), the plot;
    and the terminal."""
    rows, machine = result["results"], result["machine"]["name"]
    write_json(result, out / "bench.json")
    head = format_comparison(result["comparison"], machine, markdown=True) if args.table else f"machine: {machine}"
    md = head + "\n\n" + format_table(rows, markdown=True)
    (out / "bench.md").write_text(md.strip() + "\n")
    plot(rows, out / "speedup_vs_k.png", machine)
    if args.quiet:
        return
    c, t_cost, d_cost = result["cost_ratio_c"], result["target_forward_s"], result["draft_forward_s"]
    draft_dtype = f" (draft {result['draft_dtype']})" if result["draft_dtype"] != result["dtype"] else ""
    print(
        f"\n{args.target} <- {args.draft}{' (int8)' if args.draft_int8 else ''}"
        f"{f' (noise {args.draft_noise:g})' if args.draft_noise else ''}, {result['dtype']}{draft_dtype}, "
        f"{len(result['prompts'])} prompts ({', '.join(result['prompt_classes'])}) x {args.max_new_tokens} new "
        f"tokens, c = {c:.3f} (draft {d_cost * 1e3:.1f} ms / target {t_cost * 1e3:.1f} ms per token), "
        f"memory bandwidth {result['machine']['memory_bandwidth_GBps']:.1f} GB/s"
    )
    print(format_table(rows))
    print(format_batches(result["batch_results"]))
    if args.table:
        print("\n" + format_comparison(result["comparison"], machine))
    else:
        print(f"\nmachine: {machine}")
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'} and {out / 'speedup_vs_k.png'}")


@torch.no_grad()
def add_weight_noise(model, sigma: float, seed: int) -> None:
    """Add Gaussian noise of `sigma` times each weight tensor's own std, in place (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.dim() > 1:
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            param.add_((sigma * param.float().std() * noise).to(param.dtype))


_k = int_at_least(1, also=("auto",))
_batch_k = int_at_least(1, also=("auto", "best"))


def parser() -> OneLineParser:
    p = OneLineParser(
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
    p.add_argument("--plain", action="store_true",
                   help="also the speculoos plain call: generate(ids, draft_model=draft) with nothing else")
    p.add_argument("--suffix-cache", action="store_true",
                   help="also speculoos prompt lookup (N from --prompt-lookup, else the engine's default) drafting "
                   "from a SuffixCache of the earlier requests of the prompt's group (one cache per group and method)")
    p.add_argument("--suffix-cache-tokens", type=int, default=None, help="max_tokens of each SuffixCache "
                   "(default: SuffixCache's)")
    p.add_argument("--method", nargs=2, action="append", metavar=("NAME", "JSON"),
                   help="also speculoos with these generate() kwargs, e.g. --method autoK '{\"num_draft_tokens\": \"auto\"}'"
                   " ('\"draft_model\": null' leaves the draft out); repeatable")
    p.add_argument("--modes", nargs="+", default=["greedy", "sample"], choices=["greedy", "sample"])
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--fixed-length", action="store_true", help="min_new_tokens = max_new_tokens (no early EOS)")
    p.add_argument("--prompts", default=None, help="JSON list of prompts (strings or {kind, text}); default: shipped sets")
    p.add_argument("--prompt-class", "--prompt-kind", dest="prompt_class", default="code", choices=list(CLASS_CHOICES),
                   help="prompt class: code (alias coding), copy (answers copy long spans of the prompt), edit (code "
                   "edits given the code), repeat (groups of similar requests; later ones reported as 'repeat later'), "
                   "prose, both (code and copy, reported separately) or all")
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts of each class")
    p.add_argument("--raw", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="also run batched, e.g. 1 4 8")
    p.add_argument("--batch-k", type=_batch_k, default=3,
                   help="K for the batched runs, auto, or best: the fastest hand-set speculoos method at batch size 1")
    p.add_argument("--batch-max-new-tokens", type=int, default=None, help="max_new_tokens of the batched runs "
                   "(default: --max-new-tokens)")
    p.add_argument("--batch-repeats", type=int, default=1, help="alternated repeats per batch size")
    p.add_argument("--draft-int8", action="store_true", help="int8 copy of the draft (CPU), used by every method")
    p.add_argument("--draft-noise", type=float, default=0.0, metavar="SIGMA",
                   help="a poor draft: Gaussian noise of SIGMA x each weight's std added to the draft's weights")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="the target's dtype (and the draft's by default)")
    p.add_argument("--draft-dtype", default=None, choices=DTYPES, help="the draft's dtype (default: --dtype)")
    p.add_argument("--target-max-memory", default=None, metavar="BUDGET",
                   help="offload part of the target: memory budget per device, e.g. 'cpu=1.5GiB' or '0=8GiB,cpu=20GiB'; "
                   "accelerate places what does not fit on disk (--offload-folder)")
    p.add_argument("--offload-folder", default=None, help="offloaded target weights (default: <out>/offload)")
    p.add_argument("--table", action="store_true", help="the comparison of issue 19 in one run: target alone, "
                   "assisted defaults and best fixed K, speculoos plain call and best hand-set, greedy and sampling, "
                   "batch 1 and 4; presets " + ", ".join(f"{k}={v}" for k, v in TABLE_PRESET.items()) +
                   " (flags given override them)")
    p.add_argument("--simulate", default=None, metavar="PROFILE", help="time with a machine profile (the JSON "
                   "--profile writes) instead of the clock: every forward priced by its shape and the cost model "
                   "timing with the profile (same decisions, simulated time, real tokens)")
    p.add_argument("--trace", action="store_true", help="write each speculoos call's round trace (trace.jsonl) and "
                   "print where the rounds' time went (drafting, target pass, verification, sync, bookkeeping)")
    add_profile_arguments(p)
    p.add_argument("--summarize", default=None, metavar="DIR", help="no run: write DIR/SUMMARY.md and the generated "
                   "tables of README.md and docs/ from the result JSONs under DIR (e.g. benchmarks/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--quiet", action="store_true")
    return p


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--profile: the machine's profile (no generation benchmark)")
    g.add_argument("--profile", action="store_true", help="time the target's pass over m tokens per row on a cached "
                   "prompt and the draft's step, per batch size; print and plot T(m)/T(1), the speedup per K, the "
                   "break-even K and the cost model's choice")
    g.add_argument("--profile-m", type=int, nargs="+", default=list(DEFAULT_M), help="new tokens per row to time")
    g.add_argument("--profile-batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    g.add_argument("--profile-max-tokens", type=int, default=64, help="skip passes over more tokens (m x batch)")
    g.add_argument("--profile-repeats", type=int, default=3, help="alternated repeats per pass (the median is kept)")
    g.add_argument("--acceptance", type=float, default=None, help="per-position acceptance alpha to assume "
                   "(default: measured by a short greedy run at K=4, see --profile-acceptance-tokens; 0.8 if none)")
    g.add_argument("--profile-acceptance-tokens", type=int, default=32, help="new tokens of that run (0: alpha 0.8)")
    g.add_argument("--profile-png", default=None, help="the plot (default <out>/profile.png); the JSON goes next to it")
    g.add_argument("--profile-as-given", action="store_true", help="profile the draft as given (default: as the plain "
                   "call prepares it, draft_quantization='auto', with the draft as given's c printed beside it)")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with the --table preset under the flags given."""
    p = parser()
    args = p.parse_args(argv)
    if args.table:
        p.set_defaults(**TABLE_PRESET)
        args = p.parse_args(argv)
    args.command = command_line(argv)  # recorded in every result JSON
    return args


def main(argv=None) -> dict:
    """A run; every value is checked first (exit status 2 and one line naming the option)."""
    args = parse_args(argv)
    check(parser(), args)
    return run(args)


def command(argv=None) -> int:
    """The `speculoos-bench` console script: exit status 0 after a run (the result dict is `main`'s, for callers)."""
    main(argv)
    return 0
