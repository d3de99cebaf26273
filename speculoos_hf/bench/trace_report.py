"""`speculoos-bench --trace`: every speculoos call's round trace to <out>/trace.jsonl (one line per call), and per
method and batch size where the rounds' time went (trace.py's phases), printed and returned."""

from __future__ import annotations

import json
from pathlib import Path

from ..loop.trace import PHASES, RoundRecord, trace_summary


def trace_lines(tallies: dict, batch_rows: list[dict]) -> list[dict]:
    """One dict per call: which method, batch size and call, and its rounds (takes the traces off `batch_rows`)."""
    lines = [{"method": method, "class": cls, "batch_size": 1, "call": i, "rounds": rounds}
             for (method, cls), tally in tallies.items() for i, rounds in enumerate(tally.traces)]
    for row in batch_rows:
        lines += [{"method": row["method"], "batch_size": row["batch_size"], "call": i, "rounds": rounds}
                  for i, rounds in enumerate(row.pop("traces", []))]
    return lines


def summaries(lines: list[dict]) -> dict:
    """{(method, batch size): trace_summary over all its calls' rounds}."""
    grouped: dict = {}
    for line in lines:
        grouped.setdefault((line["method"], line["batch_size"]), []).extend(RoundRecord(**r) for r in line["rounds"])
    return {key: trace_summary(rounds) for key, rounds in grouped.items() if rounds}


def format_summaries(table: dict) -> str:
    head = ["method", "B", "rounds", "s/round"] + [p[:-2] for p in PHASES] + ["drafts/row", "kept/row"]
    rows = [" | ".join(head), " | ".join("---" for _ in head)]
    for (method, batch), s in table.items():
        shares = [f"{100 * s['share'][p]:.0f}%" for p in PHASES]
        rows.append(" | ".join([method, str(batch), str(s["rounds"]), f"{s['seconds'] / s['rounds']:.3f}", *shares,
                                f"{s['drafts_per_row_round']:.2f}", f"{s['accepted_per_row_round']:.2f}"]))
    return "\n".join(rows)


def write_traces(tallies: dict, batch_rows: list[dict], out: Path, quiet: bool = False) -> dict:
    """trace.jsonl and the per-method shares of wall time by phase (wall clock on this machine, whatever the clock
    the benchmark's tok/s come from)."""
    lines = trace_lines(tallies, batch_rows)
    with open(out / "trace.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    table = summaries(lines)
    if not quiet:
        print("\nwhere the rounds' wall time went (trace.jsonl):\n" + format_summaries(table))
    return table
