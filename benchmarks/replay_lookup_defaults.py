"""The README's table of prompt lookup's defaults: the rule replayed (`speculoos_hf.bench.lookup_replay`) over the
reference target's saved greedy answers, whole copies of up to N=32 tokens, for several thresholds and multiples.

    python benchmarks/replay_lookup_defaults.py [benchmarks/epyc-avx2/lookup_replay_answers_bf16.json]
"""

import json
import sys
from pathlib import Path

from speculoos_hf import SuffixCache
from speculoos_hf.bench.lookup_replay import replay_lookup
from speculoos_hf.drafters.prompt_lookup import PromptLookupDrafter

SETTINGS = [(0.3, 2.0, True), (0.1, 4.0, True), (0.1, 8.0, True), (0.1, 16.0, True), (0.1, None, True),
            (0.1, 8.0, False)]  # (threshold, multiple, anchored: copy_anchor.py)


def pooled(replays, field="new_tokens"):
    return sum(sum(getattr(r, field) for r in rep.rounds) for rep in replays) / sum(len(rep.rounds) for rep in replays)


def main(path: str) -> None:
    answers = json.loads(Path(path).read_text())["answers"]
    print("threshold multiple anchored | edits tok/pass | copied/round | later requests tok/pass (through the cache)")
    for threshold, multiple, anchored in SETTINGS:
        caches, edits, later = {}, [], []
        for a in answers:
            cache = caches.setdefault(a["group"], SuffixCache()) if a["group"] else None
            drafter = PromptLookupDrafter(32, threshold=threshold, multiple=multiple, cache=cache, anchored=anchored)
            replay = replay_lookup(a["prompt"], a["output"], drafter)
            (edits if a["cls"] == "edit" else later if a["cls"] == "repeat later" else []).append(replay)
        print(f"{threshold:9} {str(multiple):8} {str(anchored):8} | {pooled(edits):14.2f} | {pooled(edits, 'copied'):12.1f} | "
              f"{pooled(later):.2f}")
    first_token_by_match(answers)


def first_token_by_match(answers) -> None:
    """How often a copy's first token was right, by matched suffix length (no threshold, no multiple)."""
    caches, rounds = {}, []
    for a in answers:
        cache = caches.setdefault(a["group"], SuffixCache()) if a["group"] else None
        drafter = PromptLookupDrafter(32, threshold=0.0, multiple=None, cache=cache, anchored=False)
        rounds += [r for r in replay_lookup(a["prompt"], a["output"], drafter).rounds if r.copied]
    for lo, hi in [(1, 1), (2, 2), (3, 3), (4, 5), (6, 64)]:
        inside = [r for r in rounds if lo <= r.match <= hi]
        if inside:
            right = sum(r.accepted > 0 for r in inside) / len(inside)
            print(f"match {lo}-{hi}: {len(inside)} copies, first token right {right:.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "epyc-avx2" / "lookup_replay_answers_bf16.json"))
