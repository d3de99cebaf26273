"""`speculoos-bench --summarize DIR`: every table of results the README and docs show, generated from the result
JSONs under DIR (one folder per machine kind), so that no figure is typed by hand. It writes DIR/SUMMARY.md (every
file: how it was made, on what, and its figures), DIR/summary.png (the headline picture) and, in README.md and
docs/*.md beside DIR, the blocks between `<!-- summary: NAME [FILE] -->` and `<!-- /summary -->`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .report import format_table
from .results import KINDS, ResultFile, figure, load_results

SUMMARY, PICTURE, HEADLINES = "SUMMARY.md", "summary.png", "headlines.json"
BLOCK = re.compile(r"(<!-- summary: (?P<name>[\w-]+)(?: (?P<arg>\S+))? -->\n)(?P<body>.*?)(<!-- /summary -->)", re.S)
PROFILE_M = (2, 4, 8, 16, 32)  # T(m)/T(1) columns of the profile table
KIND_NOTES = {
    "flat-pass CPU": "a CPU with AVX-512 BF16 or AMX, where a bf16 target pass over several tokens costs about one",
    "AVX2-only CPU": "no AVX-512 BF16 or AMX: a bf16 pass over m tokens costs about m passes, a float32 one over 2 "
                     "tokens about two, then stays nearly flat",
    "GPU": "",
}


def summarize(root: Path) -> dict:
    """Write SUMMARY.md, summary.png and the generated blocks of the pages beside `root`; return what was written."""
    tables = Tables(root)
    (root / SUMMARY).write_text(tables.summary_page())
    plot_summary(tables, root / PICTURE)
    changed = []
    for page, text in generated_pages(root, tables).items():
        if page.read_text() != text:
            page.write_text(text)
            changed.append(str(page))
    print(f"wrote {root / SUMMARY}, {root / PICTURE}; regenerated {', '.join(changed) or 'no page (all up to date)'}")
    return {"summary": str(root / SUMMARY), "picture": str(root / PICTURE), "pages": changed,
            "files": len(tables.files)}


def pages(root: Path) -> list[Path]:
    """README.md and docs/*.md beside the benchmarks folder."""
    top = root.resolve().parent
    return [p for p in [top / "README.md", *sorted((top / "docs").glob("*.md"))] if p.exists()]


def generated_pages(root: Path, tables: "Tables") -> dict[Path, str]:
    """Each page that has generated blocks, with its blocks filled in from the result files."""
    out = {}
    for page in pages(root):
        text = page.read_text()
        if BLOCK.search(text):
            prefix = Path(os.path.relpath(root.resolve(), page.parent)).as_posix()
            out[page] = BLOCK.sub(lambda m: m[1] + tables.block(m["name"], m["arg"], prefix) + m[5], text)
    return out


class Tables:
    """The result files under one benchmarks folder, rendered as markdown (links relative to `prefix`)."""

    def __init__(self, root: Path):
        self.root = root
        self.files = load_results(root)
        self.by_path = {f.path: f for f in self.files}
        specs = json.loads((root / HEADLINES).read_text())["headlines"] if (root / HEADLINES).exists() else []
        self.headlines = [figure(self.by_path, s) for s in specs]

    def block(self, name: str, arg: str | None, prefix: str) -> str:
        if name == "table":
            if arg not in self.by_path:
                raise ValueError(f"<!-- summary: table {arg} -->: no such result file under {self.root}")
            return self.file_table(self.by_path[arg], prefix) + "\n"
        render = {"headline": self.headline, "profiles": self.profiles, "files": self.reproduce}.get(name)
        if render is None:
            raise ValueError(f"unknown generated block {name!r} (headline, profiles, files, table FILE)")
        return render(prefix) + "\n"

    def headline(self, prefix: str) -> str:
        """One table per machine kind: what, CPU, dtype, torch, x the target alone, x transformers, tokens/pass."""
        parts = []
        for kind in KINDS:
            mine = [f for f in self.headlines if f.file.machine.kind == kind]
            if not mine:
                parts.append(f"**{kind}**: not measured yet.")
                continue
            rows = [[f.what, f.file.machine.short, f.file.dtype, f.file.machine.torch or "?",
                     _x(f.speedup) + (" (predicted)" if f.predicted else ""),
                     f"{_x(f.versus[1])} ({f.versus[0]})" if f.versus else "", _num(f.tokens_per_pass),
                     self.link(f.file, prefix)] for f in mine]
            table = markdown_table("setting | CPU | dtype | torch | >x the target alone | x transformers' own | "
                                   ">tokens per target pass | file", rows)
            parts.append(f"**{kind}** ({KIND_NOTES[kind]}):\n\n" + table)
        return "\n\n".join(parts)

    def profiles(self, prefix: str, only: ResultFile | None = None) -> str:
        """Every machine profile: T(m)/T(1), draft step / T(1), best K, break-even K, the cost model's k."""
        rows = []
        for f in [only] if only else [f for f in self.files if f.kind == "profile"]:
            for b in f.data["batches"]:
                ratio = {int(m): r for m, r in b["cost_ratio"].items()}
                model = f"{b['cost_model_k']}" + (f" ({_x(b['cost_model_speedup'])})" if b.get("cost_model_speedup")
                                                  else "")
                rows.append([f.machine.short, f.dtype, b["batch_size"], _num(f.data["acceptance"]),
                             " ".join(f"{ratio[m]:.2f}" if m in ratio else "-" for m in PROFILE_M), _num(b["c"]),
                             f"{b['best_k']} ({_x(b['best_speedup'])})", b["break_even_k"] or "none", model,
                             self.link(f, prefix)])
        curve = f"T(m)/T(1), m = {' '.join(map(str, PROFILE_M))}"
        return markdown_table(f"machine | dtype | >batch | >acceptance | {curve} | >draft step / T(1) | "
                              "best K (predicted) | >break-even K | cost model's k | file", rows)

    def reproduce(self, prefix: str) -> str:
        """Every result file with the command that made it, the commit and the date."""
        rows = []
        for f in self.files:
            commit = f.field("commit")
            commit = commit[:10] + commit[40:] if re.match(r"[0-9a-f]{40}", commit) else commit
            rows.append([self.link(f, prefix), f.machine.short, _code(f.field("command")), commit,
                         f.field("date")[:10]])
        return markdown_table("file | machine | command | commit | date", rows)

    def file_table(self, f: ResultFile, prefix: str) -> str:
        """The figures of one file, in the form its kind has."""
        d = f.data
        if f.kind == "profile":
            return self.profiles(prefix, only=f)
        if f.kind == "reported":
            return markdown_table(
                "what | setting | >x the target alone | x transformers' own | >tokens per target pass",
                [[r["label"], r["setting"], _x(r.get("vs_target")), _theirs(r), _num(r.get("tokens_per_target_pass"))]
                 for r in d["reported"]])
        if f.kind == "answers":
            return f"{len(d['answers'])} answers (token ids): {d.get('what', '')}"
        if f.kind == "script":
            return _script_table(d["results"])
        if d.get("comparison"):
            return _comparison_table(d["comparison"])
        table = format_table([{"prompt_class": "all", **r} for r in d["results"]], markdown=True).strip()
        return table + ("\n\n" + _batch_table(d["batch_results"]) if d.get("batch_results") else "")

    def summary_page(self) -> str:
        lines = ["# Benchmark results", "",
                 f"Generated by `speculoos-bench --summarize benchmarks/` from the JSON files of each machine's folder "
                 f"(the rows of the headline tables: [{HEADLINES}]({HEADLINES})); do not edit by hand. Every file "
                 "records the command that made it, the commit, the date and the machine; `recorded` says what was "
                 "added afterwards.", "", f"![headline figures by machine]({PICTURE})", "", "## Headline figures", "",
                 self.headline(""), "", "## Machine profiles", "", self.profiles(""), "", "## Every result file"]
        for folder in dict.fromkeys(f.path.split("/")[0] for f in self.files):
            lines += ["", f"### {_folder_title(self.root / folder)} ([{folder}/]({folder}/))"]
            for f in (f for f in self.files if f.path.startswith(folder + "/")):
                lines += ["", f"#### [{f.path}]({f.path})", "", f"- command: {_code(f.field('command'))}",
                          f"- commit {f.field('commit')}, date {f.field('date')}", f"- machine: {f.machine.name}",
                          f"- recorded: {f.field('recorded')}"]
                if "superseded_by" in f.data:
                    lines.append(f"- an earlier run, superseded by [{f.data['superseded_by']}]"
                                 f"({folder}/{f.data['superseded_by']})")
                lines += ["", self.file_table(f, "")]
        return "\n".join(lines) + "\n"

    @staticmethod
    def link(f: ResultFile, prefix: str) -> str:
        return f"[{f.path.split('/')[-1]}]({prefix + '/' if prefix else ''}{f.path})"


def markdown_table(header: str, rows: list[list]) -> str:
    """A markdown table; `header`: column names joined by " | ", a name starting with ">" is right-aligned."""
    names = header.split(" | ")
    lines = ["| " + " | ".join(n.lstrip(">") for n in names) + " |",
             "|" + "|".join(" ---: " if n.startswith(">") else " --- " for n in names) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _comparison_table(rows: list[dict]) -> str:
    return markdown_table(
        "mode | >batch | row (method) | >tok/s | >x the target alone | >x assisted defaults | >accept | >tokens/pass",
        [[r["mode"], r["batch_size"], f"{r['label']} ({r['method']})", _num(r["tokens_per_s"]), _x(r["vs_target"]),
          _x(r["vs_assisted_defaults"]), _pct(r["acceptance"]), _num(r["tokens_per_target_pass"])] for r in rows])


def _batch_table(rows: list[dict]) -> str:
    return markdown_table(
        ">batch | mode | method | >target tok/s | >speculoos tok/s | >x the target's batched generate() | >accept",
        [[r["batch_size"], r["mode"], r.get("method") or f"K={r.get('K')}", _num(r["target_tokens_per_s"]),
          _num(r["speculoos_tokens_per_s"]), _x(r["ratio"]), _pct(r.get("acceptance_rate"))] for r in rows])


def _script_table(rows: list[dict]) -> str:
    if rows and "tok_s" not in rows[0]:  # tokens per pass only (tree against chain, benchmarks/tree_vs_chain.py)
        return markdown_table(
            "method | mode | >depth | shape | >tokens per target pass | >draft forwards per round",
            [[r["method"], r.get("mode"), r.get("depth"), r.get("shape"), _num(r.get("tokens_per_pass")),
              _num(r.get("draft_forwards_per_round"))] for r in rows])
    return markdown_table(
        "method | >tok/s | >x the target alone | >accept | >tokens per target pass",
        [[r["method"], _num(r["tok_s"]), _x(r["ratio"]), _pct(r["accepted"] / r["proposed"] if r.get("proposed")
                                                               else None),
          _num(r["tokens"] / r["passes"] if r.get("passes") else None)] for r in rows])


def plot_summary(tables: Tables, path: Path) -> None:
    """Left: T(m)/T(1) at batch 1 of each machine profile (one curve per machine and dtype); right: the headline
    figures, x the target alone, one bar each, named by setting, CPU and dtype (hatched: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1, 1.5]})
    seen = set()
    for f in (f for f in tables.files if f.kind == "profile"):
        key = (f.machine.short, f.data.get("dtype"))
        b = next(b for b in f.data["batches"] if b["batch_size"] == 1)
        if key in seen:
            continue
        seen.add(key)
        ratio = sorted((int(m), r) for m, r in b["cost_ratio"].items())
        left.plot([m for m, _ in ratio], [r for _, r in ratio], "o-", ms=3,
                  label=f"{f.machine.short}, {f.dtype.split(',')[0]} target")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set(xlabel="tokens scored in one target pass, m", ylabel="T(m) / T(1)",
             title="what a target pass over m tokens costs (batch 1)")
    if seen:
        left.legend(fontsize=7)
    left.grid(alpha=0.3)
    colours = {"flat-pass CPU": "tab:blue", "AVX2-only CPU": "tab:orange", "GPU": "tab:green"}
    figs = tables.headlines[::-1]
    for i, f in enumerate(figs):
        right.barh(i, f.speedup or 0, color=colours[f.file.machine.kind], hatch="//" if f.predicted else None,
                   alpha=0.85)
        right.annotate(f" {f.speedup:.2f}x", (f.speedup or 0, i), va="center", fontsize=7)
    right.set_yticks(range(len(figs)), [f"{f.what} ({f.file.machine.short}, {f.file.dtype})" for f in figs],
                     fontsize=7)
    right.axvline(1.0, color="grey", lw=0.8)
    right.set(xlabel="tokens/s over the target alone's (same decoding, same prompts)",
              title="speculoos by machine (blue: flat-pass CPU, orange: AVX2-only CPU; hatched: predicted)")
    right.grid(axis="x", alpha=0.3)
    torch_versions = ", ".join(sorted({f.file.machine.torch or "?" for f in figs}))
    gpu = "" if any(f.file.machine.kind == "GPU" for f in figs) else "; no GPU measured yet"
    fig.suptitle(f"reference pair (Qwen2.5-Coder-1.5B-Instruct target, 0.5B draft), torch {torch_versions}{gpu}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _theirs(r: dict) -> str:
    names = (("vs_assisted_defaults", "assisted defaults"), ("vs_transformers_lookup", "prompt lookup"))
    return ", ".join(f"{_x(r[key])} {name}" for key, name in names if r.get(key))


def _folder_title(folder: Path) -> str:
    readme = folder / "README.md"
    return readme.read_text().splitlines()[0].lstrip("# ").strip() if readme.exists() else folder.name


def _x(v) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) else ""


def _num(v) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else ""


def _pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else ""


def _code(text: str) -> str:
    return f"`{text}`" if text.startswith("speculoos-bench") or text.startswith("python") else text
