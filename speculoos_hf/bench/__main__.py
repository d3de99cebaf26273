"""`python -m speculoos_hf.bench`: the `speculoos-bench` command."""

from .cli import main

main()
