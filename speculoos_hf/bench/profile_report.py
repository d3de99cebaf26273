"""`speculoos-bench --profile`: measure (pass_profile), judge (breakeven), then print, plot T(m)/T(1) and the
predicted speedup per K, and write the JSON next to the PNG."""

from __future__ import annotations

import json

from .breakeven import verdicts
from .machine import machine_info, machine_name
from .pass_profile import ProfileOptions, draft_acceptance, measure_passes


def run_profile(target, draft, prompt, options: ProfileOptions, names: dict, quiet: bool = False,
                given=None) -> dict:
    """The whole profile of `target` and `draft` on `prompt` [1, L]; `names`: target, draft, dtype, draft_dtype.
    `given`: the draft as given, where `draft` is the copy the plain call prepares from it (its step is timed too,
    and its c reported beside the profiled draft's)."""
    alpha, source = draft_acceptance(target, draft, prompt, options)
    passes = measure_passes(target, draft, prompt, options, quiet, given=given)
    result = {
        **names,
        "machine": machine_name(names.get("dtype"), names.get("draft_dtype")),
        "machine_info": machine_info(None, names.get("dtype"), names.get("draft_dtype")),  # CPU flags, cores, torch
        "context_tokens": passes.context,
        "repeats": passes.repeats,
        "prefill_s": passes.prefill_s,
        "acceptance": alpha,
        "acceptance_source": source,
        "batches": verdicts(passes, alpha),
    }
    if passes.draft_as_given is not None:
        for batch in result["batches"]:
            step = passes.draft_as_given[batch["batch_size"]]
            batch.update(draft_as_given_step_s=step, c_as_given=step / batch["target_pass_s"][1])
    options.png.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(result, indent=1))
    plot_profile(result, options.png)
    if not quiet:
        print(format_profile(result))
        print(f"\nwrote {options.png} and {options.json_path}")
    return result


def format_profile(result: dict) -> str:
    lines = [
        f"machine: {result['machine']}",
        f"{result['target']} <- {result['draft']}: passes on top of a {result['context_tokens']}-token cached prompt, "
        f"medians of {result['repeats']} alternated repeats",
        f"acceptance alpha = {result['acceptance']:.3f} ({result['acceptance_source']})",
    ]
    for b in result["batches"]:
        ratio = " ".join(f"{m}:{r:.2f}" for m, r in b["cost_ratio"].items())
        speed = " ".join(f"{k}:{s:.2f}" for k, s in b["speedup_by_k"].items())
        model = b["cost_model_speedup"]
        given = f"; the draft as given: c = {b['c_as_given']:.3f}" if "c_as_given" in b else ""
        lines += [
            f"\nbatch {b['batch_size']}: T(1) = {b['target_pass_s'][1] * 1e3:.1f} ms, draft step "
            f"{b['draft_step_s'] * 1e3:.1f} ms (c = {b['c']:.3f}{given})",
            f"  T(m)/T(1), m:ratio   {ratio}",
            f"  speedup by K         {speed}",
            f"  best K {b['best_k']} ({b['best_speedup']:.2f}x), break-even K {b['break_even_k'] or 'none'}; "
            f"cost model picks k = {b['cost_model_k']}" + (f" (it predicts {model:.2f}x)" if model else ""),
        ]
    return "\n".join(lines)


def plot_profile(result: dict, path) -> None:
    """Left: T(m)/T(1) per batch size, with the flat (1) and compute-bound (m) lines; right: the predicted speedup
    per K at the measured acceptance, the cost model's choice starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    top = max(max(b["cost_ratio"]) for b in result["batches"])
    left.plot([1, top], [1, 1], color="grey", lw=0.8, label="flat: a pass costs one token's")
    left.plot([1, top], [1, top], ":", color="grey", lw=0.8, label="m tokens cost m passes")
    for b in result["batches"]:
        ms = list(b["cost_ratio"])
        line, = left.plot(ms, [b["cost_ratio"][m] for m in ms], "o-", ms=3, label=f"batch {b['batch_size']}")
        ks = list(b["speedup_by_k"])
        right.plot(ks, [b["speedup_by_k"][k] for k in ks], "o-", ms=3, color=line.get_color(),
                   label=f"batch {b['batch_size']}")
        k = b["cost_model_k"]
        if k == 0 or k in b["speedup_by_k"]:  # k = 0: the target alone, 1x
            right.plot([k], [b["speedup_by_k"].get(k, 1.0)], "*", ms=12, color=line.get_color())
    right.axhline(1.0, color="grey", lw=0.8)
    left.set(xlabel="new tokens per row m", ylabel="T(m) / T(1)", title="target pass time over a one-token pass")
    right.set(xlabel="draft tokens per round K", ylabel="predicted speedup over the target alone",
              title=f"at acceptance {result['acceptance']:.2f} (star: the cost model's k)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(result["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
