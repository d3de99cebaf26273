"""What the machine and the models cost: memory bandwidth, weight bytes per step, one forward's time, and the
speedup Leviathan et al. predict from them."""

from __future__ import annotations

import os
import platform
import time

import torch


def memory_bandwidth(size_mb: int = 512, repeats: int = 5) -> float:
    """Best read bandwidth in bytes/s of a large reduction (`torch.sum` over a float32 buffer): the practical
    ceiling for reading weights on this machine."""
    x = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def machine_info(bandwidth: float) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "memory_bandwidth_GBps": bandwidth / 1e9,
    }


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every parameter (int8-packed Linear weights included), except an
    untied input embedding, of which a step reads only a row."""
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    tied = output is not None and getattr(output, "weight", None) is embedding.weight
    skip = set() if tied else {id(p) for p in embedding.parameters()}
    total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):  # torch.ao int8 Linear
            w = module.weight()
            total += w.numel() * w.element_size()
    return total


@torch.inference_mode()
def forward_cost(model, input_ids: torch.Tensor, new_tokens: int = 1, repeats: int = 5) -> float:
    """Median seconds of one forward of `new_tokens` tokens over a cache holding `input_ids`."""
    from transformers import DynamicCache

    times = []
    for _ in range(repeats):
        cache = DynamicCache(config=model.config)
        ids = input_ids.to(model.device)
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        step = ids[:, -new_tokens:]
        t = time.perf_counter()
        model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=new_tokens)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def theoretical_speedup(alpha: float, K: float, c: float) -> float:
    """Leviathan et al.: expected tokens per round (1 - a^(K+1)) / (1 - a) over the round's cost 1 + K c."""
    tokens = K + 1 if alpha >= 1.0 else (1 - alpha ** (K + 1)) / (1 - alpha)
    return tokens / (1 + K * c)
