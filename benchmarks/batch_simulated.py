"""Batch 4 on the reference pair with every forward priced from a machine profile (issue 27.3): the plain call and
hand-set chains against the target's own batched generate() (priced as its prefill and one-token passes). The tokens
are real (the pair in float32 on this CPU, the draft as the plain call prepares it); the seconds are the profile's.

    python benchmarks/batch_simulated.py PROFILE.json NEW_TOKENS OUT.json, e.g.
    python benchmarks/batch_simulated.py benchmarks/xeon-amx-bf16/xeon_amx_bf16_int8_draft.json 64 \
        benchmarks/epyc-avx2/batch4_plain_simulated_xeon_int8.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from speculoos_hf import enable_speculative
from speculoos_hf.bench.clock import SimulatedClock
from speculoos_hf.bench.machine import machine_info
from speculoos_hf.bench.prompts import encode_text, select_prompts
from speculoos_hf.bench.report import run_record
from speculoos_hf.glue.models import load_pair
from speculoos_hf.pacing.simulated_machine import MachineProfile

METHODS = {
    "plain": {},
    "plain, chains only": {"draft_tree": False},
    "K=6": {"num_draft_tokens": 6, "draft_tree": False},
}


def run(profile_path: str, tokens: int, batch: int, out: str, repeat: int = 1) -> dict:
    target, draft, tok = load_pair(dtype=torch.float32)
    target, tok.padding_side = enable_speculative(target), "left"
    texts = [encode_text(tok, p.text, True) for p in select_prompts(None, "code", batch)][:batch]
    enc = tok(texts, return_tensors="pt", padding=True)
    profile = MachineProfile.load(profile_path)
    clock = SimulatedClock(profile)
    B, P = enc.input_ids.shape
    stock = profile.target_pass(B, P) + (tokens - 1) * profile.target_pass(B, 1)
    rows = [{"method": "target alone (batched generate(), priced: prefill + one-token passes)",
             "tok_s": B * tokens / stock, "ratio": 1.0, "tokens": B * tokens, "passes": B * tokens}]
    result = {**run_record("python " + " ".join(sys.argv)), "clock": clock.name, "profile": profile_path,
              "batch_size": B, "new_tokens_per_row": tokens, "machine": machine_info(None, "float32"), "results": rows}
    for call, (name, kwargs) in ((c, m) for c in range(repeat) for m in METHODS.items()):
        started = time.time()
        with torch.inference_mode(), clock.timing(target, draft) as span:
            target.generate(enc.input_ids, attention_mask=enc.attention_mask, draft_model=draft, do_sample=False,
                            max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
        st = target.speculative_stats
        rows.append({"method": name, "kwargs": kwargs, "call": call + 1, "tok_s": B * tokens / span.seconds,
                     "ratio": stock / span.seconds, "accepted": st.draft_tokens_accepted,
                     "proposed": st.draft_tokens_proposed, "tokens": st.new_tokens,
                     "passes": sum(r.target_forward_passes for r in st.per_row),  # per row: tokens per pass per row
                     "target_passes": st.target_forward_passes, "draft_forwards": st.draft_forward_passes,
                     "simulated_s": span.seconds, "wall_s": time.time() - started,
                     "widths": [r.width for r in st.trace], "tree_rounds": sum(r.tree for r in st.trace)})
        with open(out, "w") as f:  # after every method, in case the run is stopped
            f.write(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", help="a machine profile (the JSON speculoos-bench --profile writes)")
    p.add_argument("tokens", type=int, help="new tokens per row")
    p.add_argument("out", help="the result JSON")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the methods in turn this many times (later calls start from what earlier ones measured)")
    a = p.parse_args()
    run(a.profile, a.tokens, 4, a.out, a.repeat)
