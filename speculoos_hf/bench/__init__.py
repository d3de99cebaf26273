"""`speculoos-bench`: measured speedups of speculative decoding against the target alone and transformers' own
assisted generation and prompt lookup, all in one process, methods alternated prompt by prompt so that machine
drift cancels; and `--profile`, what a target pass over m tokens costs on this machine. See docs/bench.md.

Modules: `prompts` (prompt classes), `machine` (the machine's name, bandwidth, weight bytes, forward cost,
Leviathan bound), `methods` (what is compared, as data), `suffix` (the suffix caches of a run), `timing`
(alternated timed runs), `batched` (batched runs), `report` (tables, JSON, plot), `table` (the comparison table of
issue 19), `pass_profile`, `breakeven` and `profile_report` (`--profile`), `cli` (the command line).
"""

from .batched import count_new_tokens
from .cli import main, parse_args, parser, run
from .machine import forward_cost, machine_name, memory_bandwidth, theoretical_speedup, weight_bytes
from .methods import Method, build_methods
from .prompts import encode, encode_text, load_prompts, select_prompts
from .timing import ForwardCounter

__all__ = [
    "ForwardCounter", "Method", "build_methods", "count_new_tokens", "encode", "encode_text", "forward_cost",
    "load_prompts", "machine_name", "main", "memory_bandwidth", "parse_args", "parser", "run", "select_prompts",
    "theoretical_speedup", "weight_bytes",
]
