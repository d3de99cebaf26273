"""`speculoos-bench`: measured speedups of speculative decoding against the target alone and transformers' own
assisted generation, all in one process, methods alternated prompt by prompt so that machine drift cancels.

For every method: tokens/s, speedup over the target alone (same decoding mode), acceptance, mean accepted length,
the theoretical speedup of Leviathan et al. for the measured acceptance and draft/target cost ratio, and the
weight bandwidth achieved (bytes of weights read per second) against the machine's measured memory bandwidth.
Writes a terminal table, a JSON file with every figure and a plot of speedup vs K.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .drafters import int8_draft
from .generation import enable_speculative
from .models import REFERENCE_DRAFT, REFERENCE_TARGET, load_model, load_tokenizer


# ----------------------------------------------------------------------------------------------------------------
# measurements of the machine and the models


def memory_bandwidth(size_mb: int = 512, repeats: int = 5) -> float:
    """Best read bandwidth in bytes/s of a large reduction (`torch.sum` over a float32 buffer): the practical
    ceiling for reading weights on this machine."""
    x = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every parameter (int8-packed Linear weights included), except an
    untied input embedding, of which a step reads only a row."""
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    tied = output is not None and getattr(output, "weight", None) is embedding.weight
    skip = set() if tied else {id(p) for p in embedding.parameters()}
    total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):  # torch.ao int8 Linear
            w = module.weight()
            total += w.numel() * w.element_size()
    return total


@torch.inference_mode()
def forward_cost(model, input_ids: torch.Tensor, new_tokens: int = 1, repeats: int = 5) -> float:
    """Median seconds of one forward of `new_tokens` tokens over a cache holding `input_ids`."""
    from transformers import DynamicCache

    times = []
    for _ in range(repeats):
        cache = DynamicCache(config=model.config)
        ids = input_ids.to(model.device)
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        step = ids[:, -new_tokens:]
        t = time.perf_counter()
        model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=new_tokens)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def theoretical_speedup(alpha: float, K: int, c: float) -> float:
    """Leviathan et al.: expected tokens per round (1 - a^(K+1)) / (1 - a) over the round's cost 1 + K c."""
    tokens = K + 1 if alpha >= 1.0 else (1 - alpha ** (K + 1)) / (1 - alpha)
    return tokens / (1 + K * c)


class ForwardCounter:
    """Counts forward calls of a model (assisted generation does not report its own)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1

    def close(self):
        self._handle.remove()


# ----------------------------------------------------------------------------------------------------------------
# methods


@dataclass
class Method:
    name: str
    kind: str  # "target" | "assisted" | "speculoos"
    do_sample: bool
    K: int | None = None  # None: transformers' assisted defaults
    threshold: float | None = None  # speculoos dynamic lookahead (draft_confidence_threshold)
    seconds: float = 0.0
    new_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    proposed: int = 0
    accepted: int = 0
    reached: int = 0  # draft positions evaluated up to the first rejection (for the Leviathan alpha)
    rounds: int = 0
    rows_rounds: int = 0  # rounds summed over rows (= rounds at batch size 1)
    outputs: list = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "sample" if self.do_sample else "greedy"


def build_methods(
    ks: list[int], assisted_ks: list[int], modes: list[str], with_assisted: bool, adaptive: list[tuple[int, float]] = ()
) -> list[Method]:
    methods = []
    for mode in modes:
        do_sample = mode == "sample"
        methods.append(Method(f"target {mode}", "target", do_sample))
        if with_assisted:
            methods.append(Method(f"assisted {mode} (defaults)", "assisted", do_sample))
            for k in assisted_ks:
                methods.append(Method(f"assisted {mode} K={k}", "assisted", do_sample, k))
        for k in ks:
            methods.append(Method(f"speculoos {mode} K={k}", "speculoos", do_sample, k))
        for k, thr in adaptive:
            methods.append(Method(f"speculoos {mode} K<={k} conf {thr:g}", "speculoos", do_sample, k, thr))
    return methods


def run_method(m: Method, target, draft, ids, mask, gen_kwargs, draft_config) -> torch.Tensor:
    kwargs = dict(gen_kwargs, do_sample=m.do_sample, attention_mask=mask)
    if not m.do_sample:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    counters = ForwardCounter(target), ForwardCounter(draft)
    start = time.perf_counter()
    if m.kind == "target":
        out = target.generate(ids, **kwargs)
    elif m.kind == "assisted":
        draft.generation_config = copy.deepcopy(draft_config)  # its heuristics persist across calls otherwise
        if m.K is not None:
            draft.generation_config.num_assistant_tokens = m.K
            draft.generation_config.num_assistant_tokens_schedule = "constant"
            draft.generation_config.assistant_confidence_threshold = 0.0
        out = target.generate(ids, assistant_model=draft, **kwargs)
    else:
        out = target.generate(
            ids, draft_model=draft, num_draft_tokens=m.K, draft_confidence_threshold=m.threshold, **kwargs
        )
        s = target.speculative_stats
        m.proposed += s.draft_tokens_proposed
        m.accepted += s.draft_tokens_accepted
        m.reached += sum(s.proposed_at_position)
        m.rounds += s.target_forward_passes
        m.rows_rounds += sum(r.target_forward_passes for r in s.per_row)
    m.seconds += time.perf_counter() - start
    m.new_tokens += out.shape[1] - ids.shape[1]
    m.target_forwards += counters[0].calls
    m.draft_forwards += counters[1].calls
    for c in counters:
        c.close()
    return out


# ----------------------------------------------------------------------------------------------------------------
# the run


def load_prompts(path: str | None, kinds: str, limit: int | None) -> list[str]:
    if path:
        data = json.loads(Path(path).read_text())
    else:
        data = json.loads(resources.files("speculoos_hf").joinpath("prompts/default.json").read_text())
    items = [p if isinstance(p, dict) else {"kind": "code", "text": p} for p in data]
    items = [p for p in items if kinds == "all" or p["kind"] == kinds]
    return [p["text"] for p in items[:limit]]


def encode_text(tokenizer, text: str, chat: bool) -> str:
    """The prompt as the model sees it: wrapped in the chat template when the tokenizer has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def encode(tokenizer, text: str, chat: bool) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(encode_text(tokenizer, text, chat), return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def summarise(methods, c: float, target_bytes: int, draft_bytes: int, bandwidth: float) -> list[dict]:
    base = {m.mode: m for m in methods if m.kind == "target"}
    rows = []
    for m in methods:
        tps = m.new_tokens / m.seconds if m.seconds else 0.0
        ref = base[m.mode]
        ref_tps = ref.new_tokens / ref.seconds if ref.seconds else 0.0
        bytes_read = m.target_forwards * target_bytes + m.draft_forwards * draft_bytes
        row = {
            "method": m.name,
            "kind": m.kind,
            "mode": m.mode,
            "K": m.K,
            "threshold": m.threshold,
            "new_tokens": m.new_tokens,
            "seconds": round(m.seconds, 3),
            "tokens_per_s": tps,
            "speedup": tps / ref_tps if ref_tps else None,
            "target_forwards": m.target_forwards,
            "draft_forwards": m.draft_forwards,
            "weight_bandwidth_GBps": bytes_read / m.seconds / 1e9 if m.seconds else None,
            "bandwidth_fraction": bytes_read / m.seconds / bandwidth if m.seconds else None,
        }
        if m.kind == "speculoos":
            alpha = m.accepted / m.reached if m.reached else 0.0
            # the bound assumes K drafts every round; with dynamic lookahead use the mean K actually drafted
            k_mean = m.proposed / m.rows_rounds if m.threshold is not None and m.rows_rounds else m.K
            bound = theoretical_speedup(alpha, k_mean, c)
            row.update(
                acceptance_rate=m.accepted / m.proposed if m.proposed else 0.0,
                alpha=alpha,
                mean_accepted_length=m.new_tokens / m.rounds if m.rounds else 0.0,
                theoretical_speedup=bound,
                fraction_of_bound=(row["speedup"] / bound) if row["speedup"] and bound else None,
            )
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'method':32s} {'tok/s':>7s} {'speedup':>8s} {'accept':>7s} {'mean len':>8s} {'bound':>6s} {'of bound':>8s} {'GB/s':>6s}"
    print(header)
    print("-" * len(header))
    fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-".rjust(len(format(0.0, spec)))
    for r in rows:
        print(
            f"{r['method']:32s} {fmt(r['tokens_per_s'], '7.2f')} {fmt(r['speedup'], '7.2f')}x "
            f"{fmt(r.get('acceptance_rate'), '7.1%')} {fmt(r.get('mean_accepted_length'), '8.2f')} "
            f"{fmt(r.get('theoretical_speedup'), '5.2f')}x {fmt(r.get('fraction_of_bound'), '8.1%')} "
            f"{fmt(r['weight_bandwidth_GBps'], '6.1f')}"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, colour in (("greedy", "tab:blue"), ("sample", "tab:orange")):
        spec = sorted(
            (r for r in rows if r["kind"] == "speculoos" and r["mode"] == mode and r.get("threshold") is None),
            key=lambda r: r["K"],
        )
        if spec:
            ks = [r["K"] for r in spec]
            ax.plot(ks, [r["speedup"] for r in spec], "o-", color=colour, label=f"speculoos {mode}")
            ax.plot(ks, [r["theoretical_speedup"] for r in spec], "--", color=colour, alpha=0.6, label=f"bound {mode}")
        for r in rows:
            if r["kind"] == "speculoos" and r["mode"] == mode and r.get("threshold") is not None:
                ax.plot([r["K"]], [r["speedup"]], "*", ms=11, color=colour, label=f"speculoos {mode} K<={r['K']} conf {r['threshold']:g}")
            if r["kind"] == "assisted" and r["mode"] == mode:
                if r["K"] is None:
                    ax.axhline(r["speedup"], color=colour, ls=":", alpha=0.8, label=f"assisted {mode} defaults")
                else:
                    ax.plot([r["K"]], [r["speedup"]], "s", color=colour, mfc="none", label=f"assisted {mode} K={r['K']}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("draft tokens per round K")
    ax.set_ylabel("speedup over target alone")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def run_batches(args, target, draft, tokenizer, prompts, gen_kwargs) -> list[dict]:
    """Batched runs: for each B, the same B prompts (left-padded) through the target's own batched generate()
    and through speculoos, alternated, tokens/s ratio measured side by side."""
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    eos_ids |= set(torch.as_tensor(target.generation_config.eos_token_id or []).flatten().tolist())
    tokenizer.padding_side = "left"
    texts = [encode_text(tokenizer, p, not args.raw) for p in prompts]
    rows = []
    jobs = [(B, mode) for B in args.batch_sizes for mode in args.modes]
    bar = tqdm(total=len(jobs) * args.batch_repeats * 2, desc="batched", disable=args.quiet)
    for B, mode in jobs:
        batch = [texts[i % len(texts)] for i in range(B)]
        enc = tokenizer(batch, return_tensors="pt", padding=True)
        kwargs = dict(gen_kwargs, do_sample=mode == "sample", attention_mask=enc.attention_mask)
        if mode == "greedy":
            kwargs.update(temperature=None, top_k=None, top_p=None)
        timing = {"target": [0.0, 0], "speculoos": [0.0, 0]}
        accepted = proposed = 0
        slots = tokens = 0  # KV slots of the target cache vs the longest row: what the masked holes cost
        for rep in range(args.batch_repeats):
            order = ("target", "speculoos") if rep % 2 == 0 else ("speculoos", "target")
            for method in order:
                torch.manual_seed(args.seed + rep)
                extra = {} if method == "target" else {"draft_model": draft, "num_draft_tokens": args.batch_k}
                start = time.perf_counter()
                out = target.generate(enc.input_ids, **kwargs, **extra)
                timing[method][0] += time.perf_counter() - start
                timing[method][1] += count_new_tokens(out, enc.input_ids.shape[1], eos_ids)
                if method == "speculoos":
                    st = target.speculative_stats
                    accepted += st.draft_tokens_accepted
                    proposed += st.draft_tokens_proposed
                    slots += st.target_cache_slots
                    tokens += out.shape[1]
                bar.update()
        tps = {m: n / t for m, (t, n) in timing.items()}
        rows.append({
            "batch_size": B,
            "mode": mode,
            "K": args.batch_k,
            "target_tokens_per_s": tps["target"],
            "speculoos_tokens_per_s": tps["speculoos"],
            "ratio": tps["speculoos"] / tps["target"],
            "acceptance_rate": accepted / proposed if proposed else 0.0,
            "cache_slots_per_token": slots / tokens if tokens else None,
        })
    bar.close()
    return rows


def run(args) -> dict:
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    target = enable_speculative(load_model(args.target, dtype=dtype))
    draft = load_model(args.draft, dtype=dtype)
    if args.draft_int8:
        draft = int8_draft(draft)  # the same (quantised) draft serves speculoos and transformers' assisted generation
    tokenizer = load_tokenizer(args.target)
    prompts = load_prompts(args.prompts, args.prompt_kind, args.num_prompts)
    encoded = [encode(tokenizer, p, not args.raw) for p in prompts]
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
    adaptive = [(args.adaptive_k, thr) for thr in args.adaptive]
    methods = build_methods(args.k, args.assisted_k, args.modes, not args.no_assisted, adaptive)
    draft_config = copy.deepcopy(draft.generation_config)

    bandwidth = memory_bandwidth()
    probe = encoded[0][0]
    t_cost, d_cost = forward_cost(target, probe), forward_cost(draft, probe)
    c = d_cost / t_cost

    with torch.inference_mode():  # warm-up: first calls pay one-off costs
        for m in methods[:1]:
            run_method(m, target, draft, *encoded[0], dict(gen_kwargs, max_new_tokens=4), draft_config)
        methods = build_methods(args.k, args.assisted_k, args.modes, not args.no_assisted, adaptive)
        bar = tqdm(total=len(encoded) * len(methods), desc="speculoos-bench", disable=args.quiet)
        for i, (ids, mask) in enumerate(encoded):
            order = methods if i % 2 == 0 else methods[::-1]  # alternate so drift cancels
            for m in order:
                bar.set_postfix_str(m.name)
                torch.manual_seed(args.seed + i)
                m.outputs.append(run_method(m, target, draft, ids, mask, gen_kwargs, draft_config)[0].tolist())
                bar.update()
        bar.close()

    rows = summarise(methods, c, weight_bytes(target), weight_bytes(draft), bandwidth)
    batch_rows = run_batches(args, target, draft, tokenizer, prompts, gen_kwargs) if args.batch_sizes else []
    greedy_ref = next((m for m in methods if m.kind == "target" and not m.do_sample), None)
    for m, r in zip(methods, rows):
        if greedy_ref is not None and not m.do_sample and m is not greedy_ref:
            r["greedy_matches_target"] = sum(a == b for a, b in zip(m.outputs, greedy_ref.outputs))
    result = {
        "target": str(args.target),
        "draft": str(args.draft),
        "dtype": args.dtype,
        "draft_int8": bool(args.draft_int8),
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "prompts": prompts,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "memory_bandwidth_GBps": bandwidth / 1e9,
        },
        "target_forward_s": t_cost,
        "draft_forward_s": d_cost,
        "cost_ratio_c": c,
        "target_weight_bytes": weight_bytes(target),
        "draft_weight_bytes": weight_bytes(draft),
        "results": rows,
        "batch_results": batch_rows,
        "sample_texts": {
            m.name: tokenizer.decode(m.outputs[0][encoded[0][0].shape[1] :], skip_special_tokens=True)
            for m in methods
            if m.outputs
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / "speedup_vs_k.png")
    if not args.quiet:
        print(
            f"\n{args.target} <- {args.draft}{' (int8)' if args.draft_int8 else ''}, {args.dtype}, {len(prompts)} prompts x {args.max_new_tokens} new tokens, "
            f"c = {c:.3f} (draft {d_cost * 1e3:.1f} ms / target {t_cost * 1e3:.1f} ms per token), "
            f"memory bandwidth {bandwidth / 1e9:.1f} GB/s\n"
        )
        print_table(rows)
        for r in batch_rows:
            print(
                f"batch B={r['batch_size']} {r['mode']} K={r['K']}: target {r['target_tokens_per_s']:.2f} tok/s, "
                f"speculoos {r['speculoos_tokens_per_s']:.2f} tok/s, ratio {r['ratio']:.2f}x, "
                f"acceptance {r['acceptance_rate']:.1%}, target cache {r['cache_slots_per_token']:.2f} slots per position"
            )
        print(f"\nwrote {out / 'bench.json'} and {out / 'speedup_vs_k.png'}")
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speculoos-bench", description=__doc__.splitlines()[0])
    p.add_argument("--target", default=REFERENCE_TARGET, help="hub id, local directory or offline alias")
    p.add_argument("--draft", default=REFERENCE_DRAFT, help="hub id, local directory or offline alias")
    p.add_argument("--k", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="draft tokens per round to try")
    p.add_argument("--assisted-k", type=int, nargs="*", default=[3], help="fixed K values for transformers' assisted generation")
    p.add_argument("--adaptive", type=float, nargs="*", default=[], help="also speculoos with these draft confidence thresholds")
    p.add_argument("--adaptive-k", type=int, default=10, help="max draft tokens per round for --adaptive")
    p.add_argument("--no-assisted", action="store_true", help="skip transformers' assisted generation")
    p.add_argument("--modes", nargs="+", default=["greedy", "sample"], choices=["greedy", "sample"])
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--fixed-length", action="store_true", help="min_new_tokens = max_new_tokens (no early EOS)")
    p.add_argument("--prompts", default=None, help="JSON list of prompts (strings or {kind, text}); default: shipped set")
    p.add_argument("--prompt-kind", default="code", choices=["code", "prose", "all"])
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--raw", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="also run batched, e.g. 1 4 8")
    p.add_argument("--batch-k", type=int, default=3, help="K for the batched runs")
    p.add_argument("--batch-repeats", type=int, default=1, help="alternated repeats per batch size")
    p.add_argument("--draft-int8", action="store_true", help="int8 copy of the draft (CPU), used by every method")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> dict:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
