"""Recurrent rollback: its memory from a config, and the round-time overhead of recording on a toy hybrid.

python benchmarks/recurrent_overhead.py            # both (a few minutes on 2 CPU cores)

Memory: per row and per fed token, each gated delta-net layer records its recurrent state [Hv, dk, dv] (float32,
whatever the model's dtype) and its convolution input (2 Hk dk + Hv dv channels, the model's dtype). A round with k
drafts records k + 1 of them during the verify pass; the per-row tape holds up to k + 1 more until the round ends.

Overhead: the same toy, the same draft (the target itself, so every draft is accepted and nothing is ever rolled
back, and the output is right either way), with recording as speculoos does it and with recording switched off;
methods alternated in one process, the ratio of their times reported.
"""

from __future__ import annotations

import statistics
import time

import torch
import transformers as T

import speculoos_hf.loop.recurrent_state as rs
from speculoos_hf import enable_speculative


def bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """Recorded bytes per row per token for a gated delta-net hybrid (Qwen3.5, Qwen3-Next) config."""
    layers = sum(t == "linear_attention" for t in config.layer_types)
    hk, hv = config.linear_num_key_heads, config.linear_num_value_heads
    dk, dv = config.linear_key_head_dim, config.linear_value_head_dim
    recurrent = hv * dk * dv * 4
    conv = (2 * hk * dk + hv * dv) * dtype_bytes
    return layers * (recurrent + conv)


def memory_table(k: int = 6) -> list[str]:
    config = T.Qwen3_5TextConfig()
    per_token = bytes_per_token(config)
    rows = [f"Qwen3_5TextConfig() defaults: {config.num_hidden_layers} layers, "
            f"{sum(t == 'linear_attention' for t in config.layer_types)} gated delta-net; "
            f"{per_token / 2**20:.1f} MiB per row per token"]
    for batch in (1, 8):
        recorded = (k + 1) * per_token * batch
        rows.append(f"batch {batch}, k={k}: {recorded / 2**30:.2f} GiB recorded in the verify pass, "
                    f"{2 * recorded / 2**30:.2f} GiB with the tape; at the bound k={rs.MAX_ROLLBACK}: "
                    f"{2 * (rs.MAX_ROLLBACK + 1) * per_token * batch / 2**30:.1f} GiB")
    return rows


def toy(hidden: int = 256):
    config = T.Qwen3_5TextConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_num_key_heads=2,
                                 linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
                                 linear_conv_kernel_dim=4, layer_types=["linear_attention"] * 3 + ["full_attention"],
                                 pad_token_id=0, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    return enable_speculative(T.AutoModelForCausalLM.from_config(config).eval())


class _NoRecording:
    """Recording off: forwards keep only their last state (wrong after a rejection; none happens here)."""

    def __enter__(self):
        self.saved = rs.RecurrentStates.before_forward, rs.RecurrentStates.after_forward, rs.RecurrentStates.settle
        rs.RecurrentStates.before_forward = lambda self, n, empty: None
        rs.RecurrentStates.after_forward = lambda self, real: None
        rs.RecurrentStates.settle = lambda self, dropped, slots: None

    def __exit__(self, *exc):
        rs.RecurrentStates.before_forward, rs.RecurrentStates.after_forward, rs.RecurrentStates.settle = self.saved


def overhead(repeats: int = 5, k: int = 4, new: int = 48) -> dict:
    model = toy()
    ids = torch.randint(1, 512, (1, 24), generator=torch.Generator().manual_seed(1))
    times = {"recording": [], "off": []}
    outputs = {}
    for _ in range(repeats):
        for name in ("recording", "off"):
            start = time.perf_counter()
            if name == "off":
                with _NoRecording():
                    out = model.generate(ids, do_sample=False, max_new_tokens=new, draft_model=model, num_draft_tokens=k)
            else:
                out = model.generate(ids, do_sample=False, max_new_tokens=new, draft_model=model, num_draft_tokens=k)
            times[name].append(time.perf_counter() - start)
            outputs[name] = out
    assert torch.equal(outputs["recording"], outputs["off"])
    rec, off = statistics.median(times["recording"]), statistics.median(times["off"])
    return {"recording_s": rec, "off_s": off, "ratio": rec / off, "passes": model.speculative_stats.target_forward_passes}


if __name__ == "__main__":
    print("\n".join(memory_table()))
    print(overhead())
