"""The methods a benchmark compares. A method is data: a name, the generate() keyword arguments it adds, and
whether the draft model takes part; `generate` runs any of them the same way.

kinds: "target" (the target's stock generate(), the baseline of its decoding mode), "assisted" (transformers'
own speculative paths through the stock generate(): assisted generation with the draft as `assistant_model`,
or its prompt lookup), "speculoos" (through speculoos, `draft_model=draft` when the method uses the draft).

A new lever is one line: a `Variant` below (a flag that adds, next to every speculoos draft-model method, a twin
with extra generate() kwargs), or, with no code at all, `--method NAME JSON`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Callable
from ..glue.generation import SpeculativeGenerationMixin
from ..drafters.prepared import prepared_draft

MODES = ("greedy", "sample")
DEFAULT_LOOKUP_TOKENS = 10  # prompt_lookup_num_tokens of --hybrid when --prompt-lookup is not given


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "target" | "assisted" | "speculoos"
    mode: str  # "greedy" | "sample"
    kwargs: dict = field(default_factory=dict)  # generate() keyword arguments the method adds
    draft: bool = False  # the draft model takes part (speculoos: draft_model=, transformers: assistant_model=)
    assistant_config: dict = field(default_factory=dict)  # transformers' assisted generation: draft config fields
    draft_quantization: str | None = None  # assisted: the assistant is speculoos' prepared copy (e.g. "int8")
    suffix_cache: bool = False  # speculoos: generate(suffix_cache=...) with the cache of the prompt's group

    @property
    def do_sample(self) -> bool:
        return self.mode == "sample"

    @property
    def lookup(self) -> int | None:
        return self.kwargs.get("prompt_lookup_num_tokens")

    @property
    def drafter(self) -> str | None:
        """What proposes the tokens: "model", "lookup", "hybrid" (both), or None (the target alone)."""
        if self.draft:
            return "hybrid" if self.lookup or self.suffix_cache else "model"
        return "lookup" if self.lookup or self.suffix_cache else None

    @property
    def K(self):
        """Draft tokens per round (int, or a string such as "auto"); None: transformers' defaults or no draft."""
        for value in (self.kwargs.get("num_draft_tokens"), self.assistant_config.get("num_assistant_tokens")):
            if value is not None:
                return value
        return self.lookup

    @property
    def threshold(self) -> float | None:
        return self.kwargs.get("draft_confidence_threshold")


def target_alone(mode: str) -> Method:
    return Method(f"target {mode}", "target", mode)


def assisted(mode: str, K: int | None = None) -> Method:
    """transformers' assisted generation: its defaults (K=None) or a fixed K with no confidence cut."""
    if K is None:
        return Method(f"assisted {mode} (defaults)", "assisted", mode, draft=True)
    config = dict(num_assistant_tokens=K, num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)
    return Method(f"assisted {mode} K={K}", "assisted", mode, draft=True, assistant_config=config)


def lookup_kwargs(n: int, ngram: int | None = None) -> dict:
    return {"prompt_lookup_num_tokens": n, **({"max_matching_ngram_size": ngram} if ngram else {})}


def lookup_label(n: int, ngram: int | None = None) -> str:
    return f"lookup N={n}" + (f" M={ngram}" if ngram else "")


def transformers_lookup(mode: str, n: int, ngram: int | None = None) -> Method:
    """transformers' own prompt lookup (batch size 1 only), no draft model."""
    return Method(f"transformers {mode} {lookup_label(n, ngram)}", "assisted", mode, lookup_kwargs(n, ngram))


def speculoos(mode: str, K, threshold: float | None = None) -> Method:
    """speculoos with the draft model: fixed K, or up to K with dynamic lookahead at `threshold`."""
    if threshold is None:
        return Method(f"speculoos {mode} K={K}", "speculoos", mode, {"num_draft_tokens": K}, draft=True)
    kwargs = {"num_draft_tokens": K, "draft_confidence_threshold": threshold}
    return Method(f"speculoos {mode} K<={K} conf {threshold:g}", "speculoos", mode, kwargs, draft=True)


def prompt_lookup(mode: str, n: int, ngram: int | None = None) -> Method:
    """speculoos with prompt lookup alone (no draft model)."""
    return Method(f"speculoos {mode} {lookup_label(n, ngram)}", "speculoos", mode, lookup_kwargs(n, ngram))


def plain(mode: str) -> Method:
    """The plain call: `generate(ids, draft_model=draft)` with nothing else (the engine's defaults)."""
    return Method(f"speculoos {mode} plain", "speculoos", mode, {}, draft=True)


def cached_lookup(mode: str, n: int | None, ngram: int | None = None) -> Method:
    """speculoos prompt lookup drafting also from a `SuffixCache` of the earlier requests of the prompt's group
    (`n` None: `suffix_cache=` alone, the engine's default N)."""
    if n is None:
        return Method(f"speculoos {mode} suffix cache", "speculoos", mode, {}, suffix_cache=True)
    return replace(prompt_lookup(mode, n, ngram), name=f"speculoos {mode} {lookup_label(n, ngram)} + cache",
                   suffix_cache=True)


def custom(mode: str, name: str, spec: str) -> Method:
    """`--method NAME JSON`: speculoos with these generate() kwargs; `"draft_model": null` leaves the draft out,
    `"suffix_cache": true` passes the cache of the prompt's group."""
    kwargs = json.loads(spec)
    draft = kwargs.pop("draft_model", True) is not None
    cache = bool(kwargs.pop("suffix_cache", False))
    return Method(f"speculoos {mode} {name}", "speculoos", mode, kwargs, draft=draft, suffix_cache=cache)


def is_hand_set(method: Method) -> bool:
    """A speculoos configuration set by hand: any speculoos method but the plain call itself."""
    return method.kind == "speculoos" and bool(method.kwargs or method.suffix_cache or not method.draft)


def with_extra(method: Method, label: str, kwargs: dict) -> Method:
    return replace(method, name=f"{method.name} {label}", kwargs={**method.kwargs, **kwargs})


@dataclass(frozen=True)
class Variant:
    """A flag that adds, next to every speculoos draft-model method, a twin named `name + " " + label(args)`
    with `kwargs(args)` added to its generate() call."""
    flag: str
    help: str
    label: Callable
    kwargs: Callable
    modes: tuple = MODES  # decoding modes where the lever can matter


def _lookup_n(args) -> int:
    return args.prompt_lookup or DEFAULT_LOOKUP_TOKENS


VARIANTS = [
    Variant(
        "--hybrid",
        "hybrid drafting: each speculoos draft-model method also with prompt lookup (N from --prompt-lookup, else 10)",
        lambda a: "+ " + lookup_label(_lookup_n(a), a.max_matching_ngram),
        lambda a: lookup_kwargs(_lookup_n(a), a.max_matching_ngram),
    ),
    Variant("--block-verify", "each speculoos draft-model method also with block verification (Sun et al. 2024)",
            lambda a: "block", lambda a: {"block_verification": True}, modes=("sample",)),
    Variant("--int8-twins", "each speculoos draft-model method also with draft_quantization='int8', and each "
            "assisted method also with the same int8 copy of the draft as its assistant",
            lambda a: "int8", lambda a: {"draft_quantization": "int8"}),
]


def build_methods(args) -> list[Method]:
    """Every method the command line asks for, mode by mode, the target alone first in each mode."""
    methods = []
    for mode in args.modes:
        mine = [plain(mode)] if args.plain else []
        mine += [speculoos(mode, k) for k in args.k]
        mine += [speculoos(mode, args.adaptive_k, thr) for thr in args.adaptive]
        mine += [custom(mode, name, spec) for name, spec in args.method or []]
        for v in VARIANTS:
            if getattr(args, v.flag.lstrip("-").replace("-", "_")) and mode in v.modes:
                mine += [with_extra(m, v.label(args), v.kwargs(args)) for m in mine if m.draft and not m.lookup]
        theirs = []
        if not args.no_assisted:
            theirs = [assisted(mode)] + [assisted(mode, k) for k in args.assisted_k]
            if getattr(args, "int8_twins", False):
                theirs += [replace(m, name=f"{m.name} int8", draft_quantization="int8") for m in theirs]
        if args.prompt_lookup:
            mine.append(prompt_lookup(mode, args.prompt_lookup, args.max_matching_ngram))
            if not args.no_transformers_lookup:
                theirs.append(transformers_lookup(mode, args.prompt_lookup, args.max_matching_ngram))
        if args.suffix_cache:
            mine.append(cached_lookup(mode, args.prompt_lookup, args.max_matching_ngram))
        methods += [target_alone(mode)] + theirs + mine
    return methods


def batch_methods(args, mode: str, best: Method | None = None) -> list[Method]:
    """The batched runs' speculoos methods (transformers' speculative paths refuse batch size > 1): the plain call
    (with --plain), the method at --batch-k (`best`: the fastest hand-set method of this mode at batch 1)."""
    if args.batch_k == "best" and best is None:
        raise ValueError("--batch-k best needs a hand-set speculoos method at batch size 1 (--k or --method)")
    main = best if args.batch_k == "best" else speculoos(mode, args.batch_k)
    mine = ([plain(mode)] if args.plain else []) + [main]
    if args.prompt_lookup:
        mine.append(prompt_lookup(mode, args.prompt_lookup, args.max_matching_ngram))
    for v in VARIANTS:
        extra = v.kwargs(args)
        if getattr(args, v.flag.lstrip("-").replace("-", "_")) and mode in v.modes and \
                any(main.kwargs.get(key) != value for key, value in extra.items()):  # not a twin already
            mine.append(with_extra(main, v.label(args), extra))
    return mine


def stock_generate(model):
    """The model's stock generate(), bypassing speculoos (which now also serves prompt lookup)."""
    if isinstance(model, SpeculativeGenerationMixin):
        return super(SpeculativeGenerationMixin, model).generate
    return model.generate


def generate(method: Method, target, draft, input_ids, draft_config, suffix_cache=None, **gen_kwargs):
    """Run `method` once; returns (sequences, the speculative stats or None). `suffix_cache`: the cache a
    `suffix_cache` method drafts from and adds this request to."""
    kwargs = dict(gen_kwargs, do_sample=method.do_sample, **method.kwargs)
    if method.suffix_cache:
        if suffix_cache is None:
            raise ValueError(f"{method.name}: a suffix-cache method needs the cache of its prompt's group")
        kwargs["suffix_cache"] = suffix_cache
    if not method.do_sample:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if method.kind != "speculoos":
        if method.draft:
            if method.draft_quantization:
                draft = prepared_draft(draft, method.draft_quantization)  # the copy speculoos drafts with
            draft.generation_config = copy.deepcopy(draft_config)  # its heuristics persist across calls otherwise
            for name, value in method.assistant_config.items():
                setattr(draft.generation_config, name, value)
            kwargs["assistant_model"] = draft
        return stock_generate(target)(input_ids, **kwargs), None
    before = getattr(target, "speculative_stats", None)
    out = target.generate(input_ids, draft_model=draft if method.draft else None, **kwargs)
    stats = getattr(target, "speculative_stats", None)
    if stats is None or stats is before:  # a stock generate() leaves the stats of the last speculoos call
        raise RuntimeError(f"{method.name}: generate() did not run through speculoos (no speculative_stats)")
    return out, stats
