"""`speculoos-bench`: measured speedups of speculative decoding against the target alone and transformers' own
assisted generation and prompt lookup, all in one process, methods alternated prompt by prompt so that machine
drift cancels. See docs/bench.md.

Modules: `prompts` (prompt classes), `machine` (bandwidth, weight bytes, forward cost, Leviathan bound),
`methods` (what is compared, as data), `timing` (alternated timed runs), `batched` (batched runs),
`report` (tables, JSON, plot), `cli` (the command line).
"""

from .batched import count_new_tokens
from .cli import main, parser, run
from .machine import forward_cost, memory_bandwidth, theoretical_speedup, weight_bytes
from .methods import Method, build_methods
from .prompts import encode, encode_text, load_prompts, select_prompts
from .timing import ForwardCounter

__all__ = [
    "ForwardCounter", "Method", "build_methods", "count_new_tokens", "encode", "encode_text", "forward_cost",
    "load_prompts", "main", "memory_bandwidth", "parser", "run", "select_prompts", "theoretical_speedup",
    "weight_bytes",
]
