"""Reporting: one row of figures per (prompt class, method), a terminal or markdown table per prompt class,
the JSON file and the plot of speedup vs K; and what every result JSON records about its run (command, commit,
date)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from .machine import theoretical_speedup


def command_line(argv: list[str] | None) -> str:
    """The `speculoos-bench` command as typed (`argv` None: this process's own arguments)."""
    return shlex.join(["speculoos-bench", *(sys.argv[1:] if argv is None else argv)])


def run_record(command: str) -> dict:
    """The fields every result JSON starts with: the command that made it, the code's commit, the date (UTC), and
    that these were recorded by the run itself (files completed afterwards say so in `recorded`)."""
    return {"command": command, "commit": source_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "recorded": "at run time"}


def source_commit() -> str:
    """The git commit of the speculoos source that runs, with " + uncommitted changes" when its tracked files differ;
    "speculoos <version> (not a git checkout)" where git cannot tell."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return f"speculoos {__version__} (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def summarise(methods, classes, tallies, c: float, target_bytes: int, draft_bytes: int, bandwidth: float) -> list[dict]:
    """Rows of figures, class by class in `classes` order, methods in run order. Speedups compare with the target
    alone in the same decoding mode on the same prompts; the Leviathan bound applies to draft-model methods."""
    rows = []
    for cls in classes:
        base = {m.mode: _tps(tallies[(m.name, cls)]) for m in methods if m.kind == "target"}
        theirs = {m.mode: _tps(tallies[(m.name, cls)])  # transformers' own prompt lookup
                  for m in methods if m.kind == "assisted" and m.drafter == "lookup"}
        greedy_ref = next((tallies[(m.name, cls)] for m in methods if m.kind == "target" and m.mode == "greedy"), None)
        for m in methods:
            t = tallies[(m.name, cls)]
            tps, ref_tps = _tps(t), base[m.mode]
            bytes_read = t.target_forwards * target_bytes + t.draft_forwards * draft_bytes
            row = {
                "prompt_class": cls,
                "method": m.name,
                "kind": m.kind,
                "drafter": m.drafter,
                "mode": m.mode,
                "K": m.K,
                "threshold": m.threshold,
                "generate_kwargs": m.kwargs,
                "new_tokens": t.new_tokens,
                "seconds": round(t.seconds, 3),
                "tokens_per_s": tps,
                "speedup": tps / ref_tps if ref_tps else None,
                "speedup_vs_transformers_lookup": (tps / theirs[m.mode]) if theirs.get(m.mode) and m.kind != "target"
                else None,
                "suffix_cache": m.suffix_cache,
                "target_forwards": t.target_forwards,
                "draft_forwards": t.draft_forwards,
                "tokens_per_target_forward": t.new_tokens / t.target_forwards if t.target_forwards else None,
                "weight_bandwidth_GBps": bytes_read / t.seconds / 1e9 if t.seconds else None,
                "bandwidth_fraction": bytes_read / t.seconds / bandwidth if t.seconds else None,
            }
            if m.kind == "speculoos":
                row.update(speculoos_figures(m, t, c, row["speedup"]))
            if greedy_ref is not None and not m.do_sample and m.kind != "target":
                row["greedy_matches_target"] = sum(a == b for a, b in zip(t.outputs, greedy_ref.outputs))
            rows.append(row)
    return rows


def _tps(t) -> float:
    return t.new_tokens / t.seconds if t.seconds else 0.0


def speculoos_figures(m, t, c: float, speedup: float | None) -> dict:
    alpha = t.accepted / t.reached if t.reached else 0.0
    figures = {
        "acceptance_rate": t.accepted / t.proposed if t.proposed else 0.0,
        "alpha": alpha,
        "mean_accepted_length": t.new_tokens / t.rounds if t.rounds else 0.0,
        "mean_drafted_per_round": t.proposed / t.rows_rounds if t.rows_rounds else 0.0,
    }
    if m.drafter == "model" and isinstance(m.K, int) and set(m.kwargs) <= {"num_draft_tokens", "draft_confidence_threshold"}:
        # the bound assumes K drafts every round; with dynamic lookahead use the mean K actually drafted
        k = figures["mean_drafted_per_round"] if m.threshold is not None else m.K
        bound = theoretical_speedup(alpha, k, c)
        figures.update(theoretical_speedup=bound, fraction_of_bound=speedup / bound if speedup and bound else None)
    return figures


COLUMNS = [  # (header, key, format)
    ("tok/s", "tokens_per_s", ".2f"),
    ("speedup", "speedup", ".2f"),
    ("vs tf-lookup", "speedup_vs_transformers_lookup", ".2f"),
    ("accept", "acceptance_rate", ".1%"),
    ("tokens/pass", "tokens_per_target_forward", ".2f"),
    ("bound", "theoretical_speedup", ".2f"),
    ("of bound", "fraction_of_bound", ".0%"),
    ("GB/s", "weight_bandwidth_GBps", ".1f"),
]


def _cell(row: dict, key: str, spec: str) -> str:
    v = row.get(key)
    if not isinstance(v, (int, float)):
        return ""
    return format(v, spec) + ("x" if key in ("speedup", "speedup_vs_transformers_lookup", "theoretical_speedup") else "")


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """One table per prompt class (columns with no figure left out); in markdown, the fastest method of each
    (class, mode) but the target is in bold."""
    lines = []
    for cls in dict.fromkeys(r["prompt_class"] for r in rows):
        mine = [r for r in rows if r["prompt_class"] == cls]
        columns = [col for col in COLUMNS if any(isinstance(r.get(col[1]), (int, float)) for r in mine)]
        fastest = {}  # the fastest method that is not the target alone, per mode
        for r in mine:
            if r["kind"] != "target" and r["tokens_per_s"] > fastest.get(r["mode"], {}).get("tokens_per_s", -1):
                fastest[r["mode"]] = r
        width = max(len(r["method"]) for r in mine)
        if markdown:
            lines += [f"\n**{cls} prompts**\n", "| method | " + " | ".join(h for h, _, _ in columns) + " |",
                      "| --- |" + " ---: |" * len(columns)]
        else:
            head = f"{'[' + cls + ' prompts]':{width}s} " + " ".join(f"{h:>12s}" for h, _, _ in columns)
            lines += ["", head, "-" * len(head)]
        for r in mine:
            cells = [_cell(r, key, spec) for _, key, spec in columns]
            if markdown:
                bold = r is fastest.get(r["mode"])
                name, cells = (f"**{r['method']}**", [f"**{x}**" if x else x for x in cells]) if bold else (r["method"], cells)
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            else:
                lines.append(f"{r['method']:{width}s} " + " ".join(f"{x:>12s}" for x in cells))
    return "\n".join(lines)


def format_batches(batch_rows: list[dict]) -> str:
    return "\n".join(
        f"batch B={r['batch_size']} {r['mode']} {r['method']}: target {r['target_tokens_per_s']:.2f} tok/s, "
        f"speculoos {r['speculoos_tokens_per_s']:.2f} tok/s, ratio {r['ratio']:.2f}x, "
        f"acceptance {r['acceptance_rate']:.1%}"
        + (f", target cache {r['cache_slots_per_token']:.2f} slots per position" if r["cache_slots_per_token"] else "")
        for r in batch_rows
    )


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=1))


def plot(rows: list[dict], path: Path, machine: str = "") -> None:
    """Speedup vs K, one panel per prompt class, the machine named above: speculoos at fixed K (line) with its bound
    (dashed), the plain call (thick dashed), dynamic lookahead (stars), hybrid (crosses), transformers' assisted
    generation (squares; dotted: defaults) and the prompt lookups (dash-dot: speculoos, thin dash-dot: transformers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(r["prompt_class"] for r in rows))
    fig, axes = plt.subplots(1, len(classes), figsize=(7 * len(classes), 4.5), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        for mode, colour in (("greedy", "tab:blue"), ("sample", "tab:orange")):
            mine = [r for r in rows if r["prompt_class"] == cls and r["mode"] == mode]
            _plot_mode(ax, mine, mode, colour)
        ax.axhline(1.0, color="grey", lw=0.8, label="the target alone")
        ax.set_title(f"{cls} prompts")
        ax.set_xlabel("draft tokens per round K")
        ax.set_ylabel("x the target alone (tokens/s)")
        ax.grid(alpha=0.3)
    labels = {}  # one legend for the panels, outside them
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    fig.legend(labels.values(), labels.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    if machine:
        fig.suptitle(machine, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plot_mode(ax, rows, mode, colour) -> None:
    fixed = sorted((r for r in rows if "theoretical_speedup" in r and r["threshold"] is None), key=lambda r: r["K"])
    if fixed:
        ks = [r["K"] for r in fixed]
        ax.plot(ks, [r["speedup"] for r in fixed], "o-", color=colour, label=f"speculoos, fixed K ({mode})")
        ax.plot(ks, [r["theoretical_speedup"] for r in fixed], "--", color=colour, alpha=0.6,
                label=f"Leviathan bound ({mode})")
    for r in rows:
        label = method_label(r["method"])
        if r["kind"] == "speculoos" and r["drafter"] == "model" and not isinstance(r["K"], int):
            ax.axhline(r["speedup"], color=colour, ls="--", lw=2, alpha=0.8, label=label)
        elif r["kind"] == "speculoos" and r["drafter"] == "model" and r["threshold"] is not None:
            ax.plot([r["K"]], [r["speedup"]], "*", ms=11, color=colour, label=label)
        elif r["kind"] == "speculoos" and r["drafter"] == "hybrid" and isinstance(r["K"], int):
            ax.plot([r["K"]], [r["speedup"]], "X", ms=9, color=colour, label=label)
        elif r["drafter"] == "lookup":
            thin = r["kind"] != "speculoos"
            ax.axhline(r["speedup"], color=colour, ls="-.", lw=0.8 if thin else 1.5, alpha=0.8, label=label)
        elif r["kind"] == "assisted" and r["K"] is None:
            ax.axhline(r["speedup"], color=colour, ls=":", alpha=0.8, label=label)
        elif r["kind"] == "assisted":
            ax.plot([r["K"]], [r["speedup"]], "s", color=colour, mfc="none", label=label)


WHO = {"target": "the target alone", "assisted": "transformers' assisted generation", "transformers": "transformers'",
       "speculoos": "speculoos"}
DETAILS = {"plain": "the plain call", "K=auto": "cost-model K", "(defaults)": "its defaults", "lookup": "prompt lookup",
           "conf": "confidence"}


def method_label(method: str) -> str:
    """A bench method's name in the README's words: "assisted greedy (defaults)" -> "transformers' assisted
    generation, its defaults (greedy)"; "speculoos sample plain" -> "speculoos, the plain call (sample)"."""
    who, mode, *detail = method.split(" ")
    words = " ".join(DETAILS.get(w, w) for w in detail)
    if who == "transformers":
        return f"transformers' {words} ({mode})"
    return f"{WHO.get(who, who)}{', ' + words if words else ''} ({mode})"
