"""What the machine and the models cost: the machine's name (CPU flags, cores, torch), memory bandwidth, weight
bytes per step, one forward's time, and the speedup Leviathan et al. predict from them."""

from __future__ import annotations

import os
import platform
import time

import torch
from .pass_profile import CachedPrompt


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


# CPU features that decide whether a pass over several bf16 tokens costs about one pass (/proc/cpuinfo names)
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else `platform.processor()`)."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of `CPU_FEATURES` this CPU has (empty where /proc/cpuinfo is not readable)."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in CPU_FEATURES if f in have]
    return []


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def machine_name(dtype: str | None = None, draft_dtype: str | None = None) -> str:
    """One line that names the machine by what it is: CPU model, cores, the bf16-relevant flags, torch and its
    CPU kernels, threads, GPU if any, and the dtypes measured."""
    flags = set(cpu_flags())
    fast_bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    if fast_bf16:
        isa = ", ".join(f.upper() for f in fast_bf16)
    elif flags:
        isa = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2") + \
            " only (no AVX-512 BF16, no AMX)"
    else:
        isa = "CPU flags unknown"
    parts = [f"{platform.machine()} {cpu_model()}", f"{os.cpu_count()} cores", isa,
             f"torch {torch.__version__} (CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
             f"{torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    if dtype:
        parts.append(f"target {dtype}" + (f", draft {draft_dtype}" if draft_dtype and draft_dtype != dtype else ""))
    return ", ".join(parts)


def machine_info(bandwidth: float | None, dtype: str | None = None, draft_dtype: str | None = None) -> dict:
    """The machine as a result JSON records it (`bandwidth` in bytes/s, None where not measured)."""
    return {
        "name": machine_name(dtype, draft_dtype),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "memory_bandwidth_GBps": bandwidth / 1e9 if bandwidth else None,
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
    """Median seconds of one forward of `new_tokens` tokens over a cache holding `input_ids` (read once; each
    timed forward is cropped off again)."""
    cached, _ = CachedPrompt.prefilled(model, input_ids)
    times = [cached.pass_seconds(new_tokens) for _ in range(repeats)]
    return sorted(times)[len(times) // 2]


def theoretical_speedup(alpha: float, K: float, c: float) -> float:
    """Leviathan et al.: expected tokens per round (1 - a^(K+1)) / (1 - a) over the round's cost 1 + K c."""
    tokens = K + 1 if alpha >= 1.0 else (1 - alpha ** (K + 1)) / (1 - alpha)
    return tokens / (1 + K * c)
