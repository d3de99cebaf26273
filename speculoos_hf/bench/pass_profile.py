"""`speculoos-bench --profile`, the measurements: the target's pass over m new tokens per row on top of a cached
prompt, for each batch size, and the draft's one-token step, each the median of repeats taken in alternated order
(forward, then reversed) so that machine drift cancels; and the draft's acceptance from a short speculative run."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

DEFAULT_M = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)
DEFAULT_ACCEPTANCE = 0.8  # where no short run measures it
ACCEPTANCE_RUN_K = 4


@dataclass(frozen=True)
class ProfileOptions:
    """What `--profile` measures. m_values: new tokens per row of the timed passes (1 is always added);
    max_tokens: a pass scores at most this many tokens in all (m x batch size); acceptance: alpha to assume
    (None: measure it with a greedy run of `acceptance_tokens` new tokens at K=4, or 0.8 if that is 0 or drafts
    nothing); png: the plot (the JSON goes next to it)."""

    m_values: tuple[int, ...] = DEFAULT_M
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    max_tokens: int = 64
    repeats: int = 3
    acceptance: float | None = None
    acceptance_tokens: int = 32
    png: Path = Path("bench-results/profile.png")

    def __post_init__(self) -> None:
        if not self.m_values or min(self.m_values) < 1:
            raise ValueError(f"--profile-m: token counts must be >= 1, got {self.m_values}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"--profile-batch-sizes must be >= 1, got {self.batch_sizes}")
        if self.max_tokens < 2 * max(self.batch_sizes):
            raise ValueError(f"--profile-max-tokens {self.max_tokens} leaves batch size {max(self.batch_sizes)} "
                             "no pass over 2 tokens per row")
        if self.repeats < 1 or self.acceptance_tokens < 0:
            raise ValueError("--profile-repeats must be >= 1 and --profile-acceptance-tokens >= 0")
        if self.acceptance is not None and not 0.0 <= self.acceptance <= 1.0:
            raise ValueError(f"--acceptance must be in [0, 1], got {self.acceptance}")

    @classmethod
    def from_args(cls, args) -> "ProfileOptions":
        return cls(tuple(args.profile_m), tuple(args.profile_batch_sizes), args.profile_max_tokens,
                   args.profile_repeats, args.acceptance, args.profile_acceptance_tokens,
                   Path(args.profile_png) if args.profile_png else Path(args.out) / "profile.png")

    def m_for(self, batch: int) -> list[int]:
        """The m timed at batch size `batch`: 1 and every m with m x batch within max_tokens."""
        return sorted({1} | {m for m in self.m_values if m * batch <= self.max_tokens})

    @property
    def json_path(self) -> Path:
        return self.png.with_suffix(".json")


@dataclass(frozen=True)
class PassTimes:
    context: int  # prompt tokens in the cache under every timed pass
    prefill_s: float  # the target's prefill of that prompt, one row
    target: dict  # {batch size: {m: median seconds of a target pass over m new tokens per row}}
    draft: dict  # {batch size: median seconds of a draft step (one new token per row)}
    repeats: int
    draft_as_given: dict | None = None  # the same for the draft as given, where the profiled one is its prepared copy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CachedPrompt:
    """A model and a cache holding the prompt in `batch` rows. `pass_seconds(m)` times one pass over m new tokens
    per row and takes them off again (crops the cache, or reads the prompt anew where it cannot be cropped: sliding
    windows, recurrent layers), so every pass sees the same context."""

    def __init__(self, model, cache, prompt: torch.Tensor, batch: int = 1):
        self.model, self.cache, self.batch = model, cache, batch
        self.length = prompt.shape[1]
        self.prompt = prompt  # [1, L]

    @classmethod
    def prefilled(cls, model, prompt: torch.Tensor) -> tuple["CachedPrompt", float]:
        """The prompt [1, L] read into a fresh cache; returns it with the prefill's seconds."""
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        prompt = prompt.to(model.device)
        _sync(prompt.device)
        start = time.perf_counter()
        model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
        _sync(prompt.device)
        return cls(model, cache, prompt), time.perf_counter() - start

    def widened(self, batch: int) -> "CachedPrompt":
        """The same prompt cached in `batch` rows (a copy: no second prefill)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return CachedPrompt(self.model, cache, self.prompt, batch)

    def _restore(self, m: int) -> None:
        """Take the last m tokens off the cache."""
        if self.cache.is_croppable:
            self.cache.crop(-m)
            return
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.model(input_ids=self.prompt.expand(self.batch, -1), cache=self.cache, use_cache=True, logits_to_keep=1)

    def pass_seconds(self, m: int) -> float:
        reps = -(-m // self.length)
        new = self.prompt.repeat(1, reps)[:, :m].expand(self.batch, m)  # [B, m]: any tokens cost the same
        pos = torch.arange(self.length, self.length + m, device=new.device).expand(self.batch, m)  # [B, m]
        _sync(new.device)
        start = time.perf_counter()
        self.model(input_ids=new, position_ids=pos, cache=self.cache, use_cache=True, logits_to_keep=m)
        _sync(new.device)
        seconds = time.perf_counter() - start
        self._restore(m)
        return seconds


def alternated_medians(jobs: dict, repeats: int, tick: Callable[[], None] = lambda: None) -> dict:
    """{key: median seconds of `repeats` calls of jobs[key]()}, the jobs run in forward order on even repeats and
    reversed on odd ones."""
    keys = list(jobs)
    samples: dict = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys if r % 2 == 0 else keys[::-1]:
            samples[k].append(jobs[k]())
            tick()
    return {k: statistics.median(v) for k, v in samples.items()}


@torch.inference_mode()
def measure_passes(target, draft, prompt: torch.Tensor, options: ProfileOptions, quiet: bool = False,
                   given=None) -> PassTimes:
    """Target passes over m tokens per row and draft steps at every batch size, medians of alternated repeats;
    `given`: also the step of this model (the draft as given, where `draft` is the copy the plain call prepares)."""
    from tqdm.auto import tqdm

    t_one, prefill_s = CachedPrompt.prefilled(target, prompt)
    drafts = {"draft": CachedPrompt.prefilled(draft, prompt)[0]}
    if given is not None:
        drafts["given"] = CachedPrompt.prefilled(given, prompt)[0]
    jobs = {}
    for B in options.batch_sizes:
        t_rows = t_one if B == 1 else t_one.widened(B)
        t_rows.pass_seconds(1)  # warm-up: first calls at a batch size pay one-off costs
        jobs.update({("target", B, m): (lambda c=t_rows, m=m: c.pass_seconds(m)) for m in options.m_for(B)})
        for name, one in drafts.items():
            d_rows = one if B == 1 else one.widened(B)
            d_rows.pass_seconds(1)
            jobs[(name, B, 1)] = lambda c=d_rows: c.pass_seconds(1)
    bar = tqdm(total=len(jobs) * options.repeats, desc="profile", disable=quiet)
    medians = alternated_medians(jobs, options.repeats, bar.update)
    bar.close()
    return PassTimes(
        context=prompt.shape[1],
        prefill_s=prefill_s,
        target={B: {m: medians[("target", B, m)] for m in options.m_for(B)} for B in options.batch_sizes},
        draft={B: medians[("draft", B, 1)] for B in options.batch_sizes},
        repeats=options.repeats,
        draft_as_given={B: medians[("given", B, 1)] for B in options.batch_sizes} if given is not None else None,
    )


@torch.inference_mode()
def draft_acceptance(target, draft, prompt: torch.Tensor, options: ProfileOptions) -> tuple[float, str]:
    """(alpha, where it comes from): per-position acceptance P(draft j accepted | reached) of a short greedy
    speculative run at K=4, unless given or the run is switched off or drafts nothing (then 0.8)."""
    if options.acceptance is not None:
        return options.acceptance, "given (--acceptance)"
    if options.acceptance_tokens:
        ids = prompt.to(target.device)
        target.generate(ids, attention_mask=torch.ones_like(ids), draft_model=draft,
                        num_draft_tokens=ACCEPTANCE_RUN_K, draft_quantization=None,  # the draft as it is timed
                        max_new_tokens=options.acceptance_tokens, do_sample=False, temperature=None, top_k=None,
                        top_p=None)
        stats = target.speculative_stats
        reached = sum(stats.proposed_at_position)
        if reached:
            return sum(stats.accepted_at_position) / reached, (
                f"measured: greedy speculative run, K={ACCEPTANCE_RUN_K}, {options.acceptance_tokens} new tokens")
    return DEFAULT_ACCEPTANCE, f"default {DEFAULT_ACCEPTANCE} (no acceptance run)"
