"""Draws docs/round.png, the picture of one round in docs/architecture.md: `python docs/round_picture.py`."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

STEPS = [  # (package, step, what it holds)
    ("pacing/", "choose k\n(or a tree)", "pass times,\nacceptance"),
    ("drafters/", "propose", "drafts [B, k]\nprobs [B, k, V]"),
    ("loop/", "score", "one target pass\nlogits [B, k+1, V]"),
    ("loop/", "verify", "accepted [B]\nnext token [B]"),
    ("loop/", "apply stops", "EOS, strings,\nlength, criteria"),
    ("loop/", "commit,\nroll back", "KV holes,\nrecurrent tape"),
    ("loop/", "retire\nfinished rows", "the batch\nshrinks"),
]
COLOURS = {"pacing/": "#f6d7a7", "drafters/": "#c7e3c0", "loop/": "#bcd4f0"}


def draw(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 3.2))
    width, gap = 1.55, 0.35
    for i, (package, step, holds) in enumerate(STEPS):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.9), width, 1.1, boxstyle="round,pad=0.05", fc=COLOURS[package], ec="#333"))
        ax.text(x + width / 2, 1.45, step, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + width / 2, 2.2, package, ha="center", va="bottom", fontsize=9, family="monospace")
        ax.text(x + width / 2, 0.7, holds, ha="center", va="top", fontsize=8)
        if i + 1 < len(STEPS):
            ax.annotate("", xy=(x + width + gap, 1.45), xytext=(x + width + 0.05, 1.45),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    end = (len(STEPS) - 1) * (width + gap) + width / 2
    ax.annotate("", xy=(width / 2, 0.05), xytext=(end, 0.05), arrowprops=dict(
        arrowstyle="->", lw=1.2, ls="--", connectionstyle="arc3,rad=-0.08", color="#555"))
    ax.text(end / 2, -0.75, "timings and accepted counts feed the next round's choice", ha="center", fontsize=9,
            color="#555")
    ax.set_xlim(-0.2, len(STEPS) * (width + gap))
    ax.set_ylim(-1.0, 2.6)
    ax.axis("off")
    ax.set_title("One round of speculoos' decoding loop (loop/decoding.py: _round), batch-first", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    draw(Path(__file__).resolve().parent / "round.png")
