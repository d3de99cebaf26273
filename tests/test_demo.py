"""examples/demo.py end to end on a tiny local pair (the real-model run stays out of CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from speculoos_hf.glue.toy import toy_pair

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_runs_on_any_local_pair(tmp_path):
    target, draft, tokenizer = toy_pair()
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    out = subprocess.run(
        [sys.executable, str(DEMO), "--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"),
         "--prompt", "w01 w02 w03", "--max-new-tokens", "12", "--dtype", "float32", "--k", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "=== greedy ===" in text and "=== sampling T=0.7 ===" in text
    assert "identical to the target's greedy output: True" in text  # float32
    assert text.count("--- speedup") == 2 and "acceptance" in text
