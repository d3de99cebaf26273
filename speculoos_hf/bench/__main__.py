"""`python -m speculoos_hf.bench`: the `speculoos-bench` command."""

import sys

from .cli import command

sys.exit(command())
