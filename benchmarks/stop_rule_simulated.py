"""Batch 1 on the reference pair with every forward priced from a machine profile: the plain call with and without
its stop rule (draft_confidence_threshold=0.0 switches it off) and any other generate() settings, greedy and T=0.7.
The tokens are real (the pair in float32 on this CPU); the seconds are the profile's. Prints one JSON line per run
(ratio: the target alone's simulated time over the method's; tokens_per_pass: new tokens per target pass) and
writes them all, with the command, commit, date and machine, to OUT.json.

    python benchmarks/stop_rule_simulated.py PROFILE.json NEW_TOKENS OUT.json METHODS_JSON [MODES] [PROMPTS] [--cold]
    e.g.
    python benchmarks/stop_rule_simulated.py benchmarks/xeon-amx-bf16/xeon_amx_bf16_int8_draft.json 128 out.json \\
        '{"plain": {}, "plain, no stop rule": {"draft_confidence_threshold": 0.0}}' greedy,sample 2
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
from speculoos_hf.pacing.memory import forget_pacing
from speculoos_hf.pacing.simulated_machine import MachineProfile

SAMPLING = {"greedy": {"do_sample": False}, "sample": {"do_sample": True, "temperature": 0.7}}


def one_run(target, draft, enc, clock, tokens: int, mode: str, kwargs: dict, seed: int) -> dict:
    """One generate() call priced by `clock`: its simulated seconds and what the stats say."""
    torch.manual_seed(seed)
    started = time.time()
    with torch.inference_mode(), clock.timing(target, draft) as span:
        target.generate(enc.input_ids, attention_mask=enc.attention_mask, draft_model=draft, max_new_tokens=tokens,
                        min_new_tokens=tokens, **SAMPLING[mode], **kwargs)
    st = target.speculative_stats
    return {"simulated_s": span.seconds, "tokens_per_pass": st.new_tokens / st.target_forward_passes,
            "target_passes": st.target_forward_passes, "draft_forwards": st.draft_forward_passes,
            "accepted": st.draft_tokens_accepted, "proposed": st.draft_tokens_proposed,
            "wall_s": time.time() - started, "widths": [r.width for r in st.trace]}


def run(profile_path: str, tokens: int, out: str, methods: dict, modes: list[str], prompts: int,
        cold: bool = False) -> dict:
    target, draft, tok = load_pair(dtype=torch.float32)
    target = enable_speculative(target)
    profile = MachineProfile.load(profile_path)
    clock = SimulatedClock(profile)
    rows = []
    result = {**run_record("python " + " ".join(sys.argv)), "clock": clock.name, "profile": profile_path,
              "new_tokens": tokens,
              "machine": machine_info(None, "float32"), "results": rows}
    for i, prompt in enumerate(select_prompts(None, "code", prompts)[:prompts]):
        enc = tok([encode_text(tok, prompt.text, True)], return_tensors="pt")
        alone = profile.target_pass(1, enc.input_ids.shape[1]) + (tokens - 1) * profile.target_pass(1, 1)
        for mode in modes:
            if cold:  # the first method of each prompt and mode starts from the cost model's priors
                forget_pacing()
            for name, kwargs in methods.items():
                row = {"prompt": i, "mode": mode, "method": name, "kwargs": kwargs,
                       **one_run(target, draft, enc, clock, tokens, mode, kwargs, seed=i)}
                row["ratio"] = alone / row["simulated_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(out, "w") as f:  # after every run, in case the run is stopped
                    f.write(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", help="a machine profile (the JSON speculoos-bench --profile writes)")
    p.add_argument("tokens", type=int, help="new tokens per prompt")
    p.add_argument("out", help="the result JSON")
    p.add_argument("methods", help='JSON: {"name": {generate() keywords}, ...}')
    p.add_argument("modes", nargs="?", default="greedy,sample", help="greedy, sample or both (comma-separated)")
    p.add_argument("prompts", nargs="?", type=int, default=1, help="coding prompts, from the first")
    p.add_argument("--cold", action="store_true",
                   help="forget what earlier calls measured before each prompt and mode (its first method starts cold)")
    a = p.parse_args()
    run(a.profile, a.tokens, a.out, json.loads(a.methods), a.modes.split(","), a.prompts, a.cold)
