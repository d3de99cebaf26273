"""The architecture sweep: every model type of transformers' causal-LM mapping, speculoos against stock greedy.

For each type: a tiny random float32 target (`tiny_models`), a noisy copy of it as the draft (so that drafts are
sometimes rejected), greedy generation of `new_tokens` tokens, compared token for token with the target's own
greedy generate(): at batch 1, and in a left-padded batch of 3 unequal prompts (counted only where the target's
batched generate() agrees with each row generated alone). Optionally transformers' assisted generation at batch 1
(`assistant_model=`), with a fixed 4 draft tokens and with its defaults, for comparison.

    python -m speculoos_hf.bench.arch_sweep [--types a,b] [--batch 1 3] [--new-tokens N] [--assisted]
                                            [--write docs/architectures.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import re
import sys
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field

import torch

from ..glue.generation import speculative_generate
from .arch_outcomes import (CLASSES, CRASH, DIFFERS, DRAFT_TOKENS, EXACT, NO_CONFIG, PROMPT_1, PROMPTS_3, REFUSED,
                            STOCK_BATCH, Outcome, TypeResult)
from .arch_table import COLUMNS, counts_text, merged, read_table, render
from .tiny_models import PAD_ID, WORDS, causal_lm_types, tiny_model

__all__ = ["CLASSES", "CRASH", "DIFFERS", "EXACT", "NO_CONFIG", "REFUSED", "STOCK_BATCH", "Outcome", "SweepOptions",
           "TypeResult", "main", "run_sweep", "sweep_type"]

NEW_TOKENS = 12  # the table's and CI's number: 3 windows past the longest prompt (--new-tokens changes it)
NOISES = (0.1, 0.05, 0.02, 0.01, 0.005)  # the draft's relative weight noise: the first that keeps AGREEMENT
AGREEMENT = 0.6  # fraction of a probe's greedy choices the draft must share with the target (rejections stay)

@dataclass
class SweepOptions:
    """What the sweep runs."""

    types: list = field(default_factory=causal_lm_types)
    batches: tuple = (1, 3)
    new_tokens: int = NEW_TOKENS
    draft_tokens: int = DRAFT_TOKENS
    assisted: bool = False


# ------------------------------------------------------------------------------------------------ models, prompts


def noisy_copy(model, noise: float, seed: int = 1):
    """A draft: a deep copy of `model` with Gaussian noise of relative size `noise` on every weight."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            scale = float(param.detach().float().std()) if param.numel() > 1 else float(param.detach().abs())
            scale = scale if scale > 0 else 1.0
            param.add_((torch.randn(param.shape, generator=gen) * noise * scale).to(param.dtype))
    return draft.eval()


def agreement(target, draft, probe: torch.Tensor) -> float:
    """Fraction of positions of `probe` [1, L] where the draft's greedy choice is the target's."""
    with torch.no_grad():
        want = target(input_ids=probe).logits.argmax(-1)  # [1, L]
        got = draft(input_ids=probe).logits.argmax(-1)
    return float((want == got).float().mean())


def calibrated_draft(target):
    """The noisiest copy of `target` (NOISES) whose greedy choices agree with the target's on AGREEMENT of a probe:
    drafts are often accepted and sometimes rejected, whatever the architecture's sensitivity to noise."""
    probe = prompt(32, seed=99).unsqueeze(0)  # [1, 32]
    for noise in NOISES:
        draft = noisy_copy(target, noise)
        if agreement(target, draft, probe) >= AGREEMENT:
            break
    return draft


_DRAFTS: dict = {}


def tiny_pair(model_type: str):
    """(target, draft) of `model_type`, built once per process."""
    if model_type not in _DRAFTS:
        _DRAFTS[model_type] = calibrated_draft(tiny_model(model_type))
    return tiny_model(model_type), _DRAFTS[model_type]


def prompt(length: int, seed: int | None = None) -> torch.Tensor:
    """Random word ids `[length]` (never a special id); the sweep's prompts use seed = length."""
    seed = length if seed is None else seed
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, WORDS, (length,), generator=gen)


def left_padded(rows: list) -> tuple:
    """(input_ids [B, L], attention_mask [B, L]) of 1-D prompts, left-padded with PAD_ID."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------- one comparison


def short_reason(error: BaseException, limit: int = 200) -> str:
    """`Type: first sentence of the message`, cut to `limit` characters, without table-breaking characters."""
    lines = str(error).strip().splitlines()
    first = re.split(r"(?<=\.)\s", lines[0] if lines else "")[0]
    text = f"{type(error).__name__}: {first}".replace("|", "/").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ForwardCount:
    """Counts the forwards of a model while active (a refusal must come before any work)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __enter__(self):
        self._handle = self.model.register_forward_pre_hook(self._count)
        return self

    def _count(self, module, args):
        self.calls += 1

    def __exit__(self, *exc):
        self._handle.remove()


def _quiet(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` without gradients, warnings or prints (some models print on every forward)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


_ALONE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {(length, new_tokens): tokens}


def stock_alone(model, length: int, new_tokens: int) -> torch.Tensor:
    """The target's own greedy new tokens `[1, new_tokens]` for the prompt of `length` tokens, alone (made once per
    model: batch 1 and the rows of batch 3 share their prompts; kept while the model lives, so a later model never
    meets an earlier one's tokens)."""
    made = _ALONE.setdefault(model, {})
    if (length, new_tokens) not in made:
        made[length, new_tokens] = stock_greedy(model, prompt(length).unsqueeze(0), None, new_tokens)
    return made[length, new_tokens]


def stock_greedy(model, ids, mask, new_tokens: int) -> torch.Tensor:
    """The target's own greedy generate(): its new tokens `[B, new_tokens]`."""
    extra = {} if mask is None else {"attention_mask": mask}
    out = _quiet(model.generate, ids, do_sample=False, max_new_tokens=new_tokens, **extra)
    return out[:, ids.shape[1]:]


def run_speculoos(target, draft, ids, mask, options: SweepOptions):
    """speculoos' greedy new tokens `[B, N]` with the draft model, or the Outcome of a refusal or crash."""
    extra = {} if mask is None else {"attention_mask": mask}
    with _ForwardCount(target) as count:
        try:
            out = _quiet(speculative_generate, target, ids, draft_model=draft, num_draft_tokens=options.draft_tokens,
                         do_sample=False, max_new_tokens=options.new_tokens, **extra)
        except ValueError as error:
            if count.calls == 0:
                return Outcome(REFUSED, short_reason(error))
            return Outcome(CRASH, f"after {count.calls} target forwards: {short_reason(error)}")
        except Exception as error:  # the sweep records every failure as data
            return Outcome(CRASH, short_reason(error))
    return out[:, ids.shape[1]:]


def _counters(target) -> dict:
    stats = getattr(target, "speculative_stats", None)
    if stats is None:
        return {}
    return dict(proposed=stats.draft_tokens_proposed, accepted=stats.draft_tokens_accepted)


def _first_difference(got: torch.Tensor, want: torch.Tensor) -> str:
    """Where `got` [B, N] first differs from `want`, per differing row."""
    if got.shape != want.shape:
        return f"differs: {got.shape[-1]} new tokens where stock gives {want.shape[-1]}"
    rows = []
    for b in range(want.shape[0]):
        diff = (got[b] != want[b]).nonzero()
        if len(diff):
            rows.append(f"row {b} from token {int(diff[0])}")
    return "differs: " + ", ".join(rows)


def batch1(target, draft, options: SweepOptions) -> Outcome:
    """speculoos against stock greedy on one prompt."""
    ids = prompt(PROMPT_1).unsqueeze(0)  # [1, P]
    want = stock_alone(target, PROMPT_1, options.new_tokens)
    got = run_speculoos(target, draft, ids, None, options)
    if isinstance(got, Outcome):
        return got
    if torch.equal(got, want):
        return Outcome(EXACT, **_counters(target))
    return Outcome(DIFFERS, _first_difference(got, want), **_counters(target))


def batch3(target, draft, options: SweepOptions) -> Outcome:
    """speculoos against stock greedy on 3 left-padded prompts of unequal lengths: exact when it equals stock's
    batched output and that equals each row generated alone."""
    rows = [prompt(n) for n in PROMPTS_3]
    ids, mask = left_padded(rows)  # [3, W]
    try:
        want = stock_greedy(target, ids, mask, options.new_tokens)  # [3, N]
    except Exception as error:
        return Outcome(STOCK_BATCH, f"stock batched generate() fails: {short_reason(error)}")
    alone = torch.cat([stock_alone(target, n, options.new_tokens) for n in PROMPTS_3])  # [3, N]
    got = run_speculoos(target, draft, ids, mask, options)
    if isinstance(got, Outcome):
        return got
    counters = _counters(target)
    stock_agrees = torch.equal(want, alone)
    if torch.equal(got, want):
        if stock_agrees:
            return Outcome(EXACT, **counters)
        return Outcome(STOCK_BATCH, f"stock batched {_first_difference(want, alone)[8:]} of its rows alone; "
                                    "speculoos gives stock's batched output", **counters)
    if not stock_agrees and torch.equal(got, alone):
        return Outcome(STOCK_BATCH, f"stock batched {_first_difference(want, alone)[8:]} of its rows alone; "
                                    "speculoos gives each row's own output", **counters)
    return Outcome(DIFFERS, _first_difference(got, want) + " of stock's batched output", **counters)


def assisted(target, draft, options: SweepOptions, fixed_k: int | None) -> Outcome:
    """transformers' assisted generation at batch 1 (`assistant_model=draft`) against stock greedy: with `fixed_k`
    draft tokens per round (constant schedule, no confidence stop), or with its defaults (None)."""
    ids = prompt(PROMPT_1).unsqueeze(0)
    want = stock_alone(target, PROMPT_1, options.new_tokens)
    gc = draft.generation_config
    saved = (gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold)
    if fixed_k is not None:
        gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold = (
            fixed_k, "constant", 0.0)
    try:
        got = _quiet(target.generate, ids, assistant_model=draft, do_sample=False,
                     max_new_tokens=options.new_tokens)[:, ids.shape[1]:]
    except ValueError as error:
        return Outcome(REFUSED, short_reason(error))
    except Exception as error:
        return Outcome(CRASH, short_reason(error))
    finally:
        gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold = saved
    return Outcome(EXACT) if torch.equal(got, want) else Outcome(DIFFERS, _first_difference(got, want))


# ------------------------------------------------------------------------------------------------------ one type


def sweep_type(model_type: str, options: SweepOptions) -> TypeResult:
    """Every comparison the options ask for on `model_type`; a model that cannot be built or that stock generate()
    cannot run is `no-config` in every column, with why."""
    result = TypeResult(model_type)
    start = time.perf_counter()
    try:
        target, draft = tiny_pair(model_type)
        stock_alone(target, PROMPT_1, options.new_tokens)
    except Exception as error:
        missing = Outcome(NO_CONFIG, short_reason(error))
        result.batch1 = missing if 1 in options.batches else None
        result.batch3 = missing if 3 in options.batches else None
        if options.assisted:
            result.assisted_k = result.assisted_default = missing
        result.seconds = time.perf_counter() - start
        return result
    if 1 in options.batches:
        result.batch1 = _guarded(batch1, target, draft, options)
    if 3 in options.batches:
        result.batch3 = _guarded(batch3, target, draft, options)
    if options.assisted:
        result.assisted_k = _guarded(assisted, target, draft, options, options.draft_tokens)
        result.assisted_default = _guarded(assisted, target, draft, options, None)
    result.seconds = time.perf_counter() - start
    return result


def _guarded(compare, *args) -> Outcome:
    """`compare(*args)`; a failure of stock generate() inside it (the reference) is `no-config`, with why."""
    try:
        return compare(*args)
    except Exception as error:
        return Outcome(NO_CONFIG, f"stock generate() fails: {short_reason(error)}")


# ------------------------------------------------------------------------------------------------------ the sweep

def run_sweep(options: SweepOptions, out=None, jobs: int = 1) -> list:
    """TypeResults of every type in `options.types` (in that order), one line each printed to `out` as it comes;
    `jobs` > 1 spreads the types over that many fresh worker processes (one torch thread each)."""
    if jobs <= 1:
        _quiet_process()
        results = []
        for model_type in options.types:
            results.append(sweep_type(model_type, options))
            if out is not None:
                print(line(results[-1]), file=out, flush=True)
        return results
    by_type = {}
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=_quiet_process) as pool:
        for result in pool.imap_unordered(_sweep_one, [(t, options) for t in options.types]):
            by_type[result.model_type] = result
            if out is not None:
                print(line(result), file=out, flush=True)
    return [by_type[t] for t in options.types]


def _sweep_one(task) -> TypeResult:
    return sweep_type(*task)


def _quiet_process() -> None:
    """One torch thread (tiny models: more threads only contend) and transformers' errors only."""
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()


def line(result: TypeResult) -> str:
    """One printed line: the type, each outcome with its reason or its acceptance, the seconds."""
    parts = [f"{result.model_type:<26}"]
    for name, outcome in result.outcomes().items():
        if outcome is None:
            continue
        text = outcome.kind
        if outcome.proposed:
            text += f" ({outcome.accepted}/{outcome.proposed} accepted)"
        if outcome.reason:
            text += f" [{outcome.reason}]"
        parts.append(f"{COLUMNS[name]}: {text}")
    return " | ".join(parts) + f" | {result.seconds:.1f}s"


# --------------------------------------------------------------------------------------------------------- command


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    out = argparse.ArgumentParser(prog="python -m speculoos_hf.bench.arch_sweep", description=__doc__.split("\n")[0])
    out.add_argument("--types", help="comma-separated model types (default: every causal-LM type)")
    out.add_argument("--batch", type=int, nargs="+", choices=(1, 3), default=[1, 3])
    out.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    out.add_argument("--assisted", action="store_true", help="also transformers' assisted generation at batch 1")
    out.add_argument("--write", metavar="PATH", help="write (merge into) the markdown table at PATH")
    out.add_argument("--json", metavar="PATH", help="write every outcome as JSON")
    out.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    types = args.types.split(",") if args.types else causal_lm_types()
    unknown = sorted(set(types) - set(causal_lm_types()))
    if unknown:
        raise SystemExit(f"not in transformers' causal-LM mapping: {', '.join(unknown)}")
    options = SweepOptions(types=types, batches=tuple(args.batch), new_tokens=args.new_tokens, assisted=args.assisted)
    start = time.perf_counter()
    results = run_sweep(options, out=sys.stdout, jobs=args.jobs)
    print(counts_text(results))
    print(f"{len(results)} types in {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    if args.write:
        try:
            with open(args.write) as f:
                old = read_table(f.read())
        except FileNotFoundError:
            old = {}
        with open(args.write, "w") as f:
            f.write(render(merged(old, results), options.new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
