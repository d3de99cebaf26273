"""Batch 1 on the reference pair with every forward priced from a machine profile: the plain call with and without
its stop rule (draft_confidence_threshold=0.0 switches it off) and any other generate() settings, greedy and T=0.7.
The tokens are real (the pair in float32 on this CPU); the seconds are the profile's. Prints one JSON line per run
(ratio: the target alone's simulated time over the method's; tpp: tokens per target pass) and writes them all.

    python benchmarks/stop_rule_simulated.py PROFILE.json NEW_TOKENS OUT.json METHODS_JSON [MODES] [PROMPTS], e.g.
    python benchmarks/stop_rule_simulated.py benchmarks/xeon-amx-bf16/xeon_amx_bf16_int8_draft.json 128 out.json \
        '{"plain": {}, "plain, no stop rule": {"draft_confidence_threshold": 0.0}}' greedy,sample 2
"""
import json, sys, time, torch
from speculoos_hf import enable_speculative
from speculoos_hf.bench.clock import SimulatedClock
from speculoos_hf.bench.prompts import encode_text, select_prompts
from speculoos_hf.glue.models import load_pair
from speculoos_hf.pacing.simulated_machine import MachineProfile

profile_path, tokens, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
methods = json.loads(sys.argv[4])
modes = sys.argv[5].split(",") if len(sys.argv) > 5 else ["greedy", "sample"]
nprompts = int(sys.argv[6]) if len(sys.argv) > 6 else 1
target, draft, tok = load_pair(dtype=torch.float32)
target = enable_speculative(target)
profile = MachineProfile.load(profile_path)
clock = SimulatedClock(profile)
rows = []
for pi, p in enumerate(select_prompts(None, "code", nprompts)[:nprompts]):
    enc = tok([encode_text(tok, p.text, True)], return_tensors="pt")
    P = enc.input_ids.shape[1]
    stock = profile.target_pass(1, P) + (tokens - 1) * profile.target_pass(1, 1)
    for mode in modes:
        for name, kw in methods.items():
            samp = dict(do_sample=True, temperature=0.7) if mode == "sample" else dict(do_sample=False)
            torch.manual_seed(pi)
            t0 = time.time()
            with torch.inference_mode(), clock.timing(target, draft) as span:
                target.generate(enc.input_ids, attention_mask=enc.attention_mask, draft_model=draft,
                                max_new_tokens=tokens, min_new_tokens=tokens, **samp, **kw)
            st = target.speculative_stats
            r = dict(prompt=pi, mode=mode, method=name, ratio=stock / span.seconds, tpp=st.new_tokens / st.target_forward_passes,
                     passes=st.target_forward_passes, dfw=st.draft_forward_passes, acc=st.draft_tokens_accepted,
                     prop=st.draft_tokens_proposed, wall=time.time() - t0, widths=[x.width for x in st.trace][:40])
            rows.append(r); print(json.dumps(r), flush=True)
json.dump(rows, open(out, "w"), indent=1)
