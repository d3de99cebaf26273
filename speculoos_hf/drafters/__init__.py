"""Sources of draft tokens behind one interface (`Drafter`), and ways to make a draft model cheaper."""

from .base import Drafter, Proposal, RoundOutcome
from .quantize import int8_draft

__all__ = ["Drafter", "Proposal", "RoundOutcome", "int8_draft"]
