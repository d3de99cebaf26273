"""The comparison table of issue 19 from one run: per decoding mode, the target alone, transformers' assisted
generation with its defaults and with its best fixed K, the speculoos plain call and the best hand-set speculoos
configuration at batch size 1 (all prompt classes summed), then the batched runs; tok/s against the target alone
and against assisted generation with its defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .methods import Method, is_hand_set
from .timing import Tally


@dataclass(frozen=True)
class Entry:
    mode: str
    batch_size: int
    label: str  # what the row is ("assisted, best fixed K")
    method: str  # the method that fills it
    tokens_per_s: float
    vs_target: float | None
    vs_assisted_defaults: float | None = None
    acceptance: float | None = None
    tokens_per_target_pass: float | None = None


def summed(tallies: dict, method: Method) -> Tally:
    """The method's tallies over every prompt class."""
    total = Tally()
    for (name, _), t in tallies.items():
        if name == method.name:
            for key in ("seconds", "new_tokens", "target_forwards", "proposed", "accepted"):
                setattr(total, key, getattr(total, key) + getattr(t, key))
    return total


def _tps(t: Tally) -> float:
    return t.new_tokens / t.seconds if t.seconds else 0.0


def fastest(methods: list[Method], tallies: dict, keep) -> Method | None:
    """The method with the most tok/s (all classes summed) among those `keep(method)` accepts."""
    chosen = [m for m in methods if keep(m)]
    return max(chosen, key=lambda m: _tps(summed(tallies, m))) if chosen else None


def best_hand_set(methods: list[Method], tallies: dict, mode: str, batchable: bool = False) -> Method | None:
    """The fastest speculoos configuration of `mode` other than the plain call (`batchable`: among those the
    batched runs can take, i.e. without a suffix cache)."""
    return fastest(methods, tallies, lambda m: m.mode == mode and is_hand_set(m) and not (batchable and m.suffix_cache))


def batch1_entries(methods: list[Method], tallies: dict, mode: str) -> list[Entry]:
    picks = [
        ("target alone", fastest(methods, tallies, lambda m: m.mode == mode and m.kind == "target")),
        ("assisted, defaults", fastest(methods, tallies, lambda m: m.mode == mode and m.kind == "assisted"
                                       and m.drafter == "model" and m.K is None and not m.draft_quantization)),
        ("assisted, best fixed K", fastest(methods, tallies, lambda m: m.mode == mode and m.kind == "assisted"
                                           and m.drafter == "model" and isinstance(m.K, int))),
        ("speculoos, plain call", fastest(methods, tallies, lambda m: m.mode == mode and m.kind == "speculoos"
                                          and not is_hand_set(m))),
        ("speculoos, best hand-set", best_hand_set(methods, tallies, mode)),
    ]
    picks = [(label, m) for label, m in picks if m is not None]
    base = _tps(summed(tallies, picks[0][1]))
    assisted = next((_tps(summed(tallies, m)) for label, m in picks if label == "assisted, defaults"), None)
    entries = []
    for label, m in picks:
        t = summed(tallies, m)
        entries.append(Entry(
            mode, 1, label, m.name, _tps(t), _tps(t) / base if base else None,
            _tps(t) / assisted if assisted else None,
            t.accepted / t.proposed if m.kind == "speculoos" and t.proposed else None,
            t.new_tokens / t.target_forwards if t.target_forwards else None,
        ))
    return entries


def batch_entries(batch_rows: list[dict], mode: str, plain_name: str) -> list[Entry]:
    """Per batch size: the target's batched generate(), then each speculoos method run at that size."""
    entries = []
    for B in dict.fromkeys(r["batch_size"] for r in batch_rows if r["mode"] == mode):
        mine = [r for r in batch_rows if r["mode"] == mode and r["batch_size"] == B]
        entries.append(Entry(mode, B, "target alone, batched generate()", f"target {mode}",
                             mine[0]["target_tokens_per_s"], 1.0))
        for r in mine:
            label = "speculoos, plain call" if r["method"] == plain_name else "speculoos, hand-set"
            entries.append(Entry(mode, B, label, r["method"], r["speculoos_tokens_per_s"], r["ratio"],
                                 acceptance=r["acceptance_rate"]))
    return entries


def comparison_table(methods: list[Method], tallies: dict, batch_rows: list[dict]) -> list[dict]:
    """The table's rows (dicts, JSON-ready), mode by mode: batch size 1, then each batch size run."""
    rows = []
    for mode in dict.fromkeys(m.mode for m in methods):
        rows += batch1_entries(methods, tallies, mode) + batch_entries(batch_rows, mode, f"speculoos {mode} plain")
    return [asdict(e) for e in rows]


def format_comparison(rows: list[dict], machine: str, markdown: bool = False) -> str:
    """One table per mode; the machine named above them."""
    lines = [f"machine: {machine}"]
    head = ["tok/s", "vs target", "vs assisted", "accept", "tokens/pass"]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        names = [f"B={r['batch_size']} {r['label']} ({r['method']})" for r in mine]
        if markdown:
            lines += ["", f"**{mode}**", "", "| | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]
            lines += [f"| {n} | " + " | ".join(_cells(r)) + " |" for n, r in zip(names, mine)]
        else:
            width = max(len(n) for n in names)
            lines += ["", f"{'[' + mode + ']':{width}s} " + " ".join(f"{h:>12s}" for h in head)]
            lines += [f"{n:{width}s} " + " ".join(f"{c:>12s}" for c in _cells(r)) for n, r in zip(names, mine)]
    return "\n".join(lines)


def _cells(r: dict) -> list[str]:
    return [f"{r['tokens_per_s']:.2f}", _x(r["vs_target"]), _x(r["vs_assisted_defaults"]), _fmt(r["acceptance"], ".1%"),
            _fmt(r["tokens_per_target_pass"], ".2f")]


def _x(v) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) else ""


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else ""
