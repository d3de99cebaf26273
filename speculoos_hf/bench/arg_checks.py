"""Checks of `speculoos-bench`'s values after parsing (the --table preset applied): a bad value exits with status 2
and one line naming the option, before any model is loaded and before any file is created."""

from __future__ import annotations

import math
from pathlib import Path

from ..cli_checks import file_problem, folder_problem, model_problem, placement_problems, refuse_first
from .methods import build_methods, custom, is_hand_set
from .clock import profile_problem
from .pass_profile import ProfileOptions
from .prompts import select_prompts

AT_LEAST_1 = ("adaptive_k", "max_new_tokens", "num_prompts", "batch_max_new_tokens", "batch_repeats",
              "prompt_lookup", "max_matching_ngram", "suffix_cache_tokens", "profile_max_tokens", "profile_repeats")
ALL_AT_LEAST_1 = ("assisted_k", "batch_sizes", "profile_m", "profile_batch_sizes")
FLAGS = {"prompt_class": "--prompt-class"}


def flag(dest: str) -> str:
    return FLAGS.get(dest, "--" + dest.replace("_", "-"))


def check(parser, args) -> None:
    """Exit 2 at the first bad value (`parser`: a cli_checks.OneLineParser)."""
    refuse_first(parser, problems(args))


def problems(args):
    """(flag, why its value is bad, or None), one at a time: numbers, then files, then the models (a hub id's config
    is read: the slowest check comes last)."""
    if args.summarize is not None:  # tables from saved JSONs: nothing else is used
        yield "--summarize", None if Path(args.summarize).is_dir() else f"{args.summarize}: no such directory"
        return
    yield from _number_problems(args)
    yield from _method_problems(args)
    yield from _prompts_problem(args)
    yield "--out", folder_problem(args.out)
    if args.profile_png is not None:
        yield "--profile-png", file_problem(args.profile_png)
    if args.simulate is not None:
        yield "--simulate", profile_problem(args.simulate)
    yield from placement_problems(args.target_max_memory, args.offload_folder)
    yield "--target", model_problem(args.target)
    yield "--draft", model_problem(args.draft)


def _number_problems(args):
    for dest in AT_LEAST_1:
        value = getattr(args, dest)
        yield flag(dest), None if value is None or value >= 1 else f"expected an integer >= 1, got {value}"
    for dest in ALL_AT_LEAST_1:
        bad = [v for v in getattr(args, dest) if v < 1]
        yield flag(dest), f"expected integers >= 1, got {bad[0]}" if bad else None
    bad_conf = [c for c in args.adaptive if not (math.isfinite(c) and 0 <= c < 1)]
    yield "--adaptive", f"expected thresholds in [0, 1), got {bad_conf[0]}" if bad_conf else None
    yield "--temperature", None if _finite(args.temperature) and args.temperature > 0 else \
        f"expected a number > 0, got {args.temperature}"
    yield "--draft-noise", None if _finite(args.draft_noise) and args.draft_noise >= 0 else \
        f"expected a number >= 0, got {args.draft_noise}"
    if args.acceptance is not None:
        yield "--acceptance", None if _finite(args.acceptance) and 0 <= args.acceptance <= 1 else \
            f"expected a number in [0, 1], got {args.acceptance}"
    yield "--profile-acceptance-tokens", None if args.profile_acceptance_tokens >= 0 else \
        f"expected an integer >= 0, got {args.profile_acceptance_tokens}"
    if args.profile:
        yield from _profile_problem(args)


def _profile_problem(args):
    try:
        ProfileOptions.from_args(args)
    except ValueError as e:  # its messages start with the flag
        message = str(e)
        name = message.split()[0].rstrip(":")
        yield (name if name.startswith("--") else "--profile"), message


def _method_problems(args):
    for name, spec in args.method or []:
        try:
            custom("greedy", name, spec)
        except Exception as e:  # noqa: BLE001 - JSON that is not an object of generate() kwargs
            yield "--method", f"{name} {spec!r}: expected a JSON object of generate() arguments ({e})"
    yield "--batch-k", batch_k_problem(args, build_methods(args))


def batch_k_problem(args, methods) -> str | None:
    """--batch-k best picks the fastest hand-set speculoos method at batch size 1: there must be one (the message
    names --batch-k's value, "best")."""
    if args.batch_sizes and args.batch_k == "best" and not any(is_hand_set(m) and not m.suffix_cache for m in methods):
        return "best needs a hand-set speculoos method at batch size 1 (--k or --method)"
    return None


def _prompts_problem(args):
    try:
        select_prompts(args.prompts, args.prompt_class, args.num_prompts)
    except SystemExit as e:  # no prompt of the class asked for
        yield "--prompt-class", str(e)
    except Exception as e:  # noqa: BLE001 - unreadable, not JSON, or items without kind/text
        yield "--prompts", f"{args.prompts}: not a JSON list of prompts (strings or {{kind, text}}): " \
                           f"{type(e).__name__}: {e}"


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)
