"""What the cost model learnt in earlier calls, handed on to the next call on the same target, draft and clock.

A call that starts from priors spends its first rounds finding out what the machine costs: a plain round to time
the target alone, a short first drafting round, k climbing while acceptance settles. A later call on the same
target and draft (a benchmark's repeats, a chat's turns, a dataset's prompts) starts from what the last one
measured instead: its pass times, draft steps, how long a stretch without drafts lasts, and the acceptance by
position and the draft's confidence record of the last call under the same sampling settings (kept per setting: a
greedy call after a sampled one starts from the greedy acceptance; seen on an AVX-512 BF16 CPU, batch 4, where a
greedy call after a sampled one drafted from the priors' acceptance at the measured, dearer costs, judged that no
catch-up paid, and decoded alone to the end). Not how copies fared against the
matcher's confidence: that depends on the prompt (a warm start from it lost 5-10% tokens per pass on edits). Every
figure goes on being updated as the call runs, so a changed machine or prompt moves them within a few rounds.

Keyed weakly on the target (entries die with it), then on the pacer's kind, the clock (the real one of a device, or
a simulated machine's profile), the draft object and the models' dtypes and devices; an entry whose draft object is
gone (its id reused by another) is skipped. The output never depends on any of it: only how many tokens each round
drafts. `forget_pacing()` drops everything learnt (tests start from priors).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Any

import torch

_LEARNT: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


@dataclass
class Learnt:
    """One call's books as the next call starts from them (handed over when the call ends; each later call recalls
    a copy, so calls share no object)."""

    passes: Any  # pass_times.TargetPassTimes
    drafts: Any  # pass_times.DraftTimes
    accept: Any  # acceptance_model.AcceptanceModel (by position only); None: not carried (other settings)
    stretch: int  # plain rounds in a stretch without drafts (k_policy)
    setting: Any = None  # the sampling settings the acceptance was measured under
    confidences: Any = None  # draft_stop.ConfidenceRecord


@dataclass(frozen=True)
class Slot:
    """Where one call's pacer finds and leaves its books: the target, its draft (a model, a drafter object or
    None) and the key of everything else the figures depend on."""

    target: torch.nn.Module
    draft: Any
    key: tuple
    setting: Any = None

    def recall(self) -> Learnt | None:
        """What the last call with this slot's key learnt (a copy), its acceptance from the last call under this
        slot's sampling settings (None: no such call), or None."""
        entry = self._entry()
        if entry is None:
            return None
        _, learnt, by_setting = entry
        learnt = copy.deepcopy(learnt)
        learnt.accept, learnt.confidences = copy.deepcopy(by_setting.get(self.setting, (None, None)))
        learnt.setting = self.setting
        return learnt

    def keep(self, learnt: Learnt) -> None:
        """Leave `learnt` for the next call with this key (its call is over: nothing updates it any more); its
        acceptance joins those of the other sampling settings."""
        entry = self._entry()
        try:
            by_setting = dict(entry[2]) if entry is not None else {}
            by_setting[learnt.setting] = (learnt.accept, learnt.confidences)
            draft_ref = weakref.ref(self.draft) if self.draft is not None else None
            _LEARNT.setdefault(self.target, {})[self.key] = (draft_ref, learnt, by_setting)
        except TypeError:  # the target or the draft cannot be weakly referenced (or a setting hashed): not kept
            return

    def _entry(self) -> tuple | None:
        """(draft ref, last Learnt, {setting: (acceptance, confidences)}) kept for this key and this very draft."""
        try:
            entry = _LEARNT.get(self.target, {}).get(self.key)
        except TypeError:  # a target that cannot be weakly referenced: nothing is kept
            return None
        if entry is None or (entry[0]() if entry[0] is not None else None) is not self.draft:
            return None
        return entry


def slot_for(target, draft, kind: tuple, watch, setting=None) -> Slot:
    """The slot of a call: `kind` names the pacer, `watch` its clock (its `clock_key()`, else the object itself),
    `setting` the sampling settings (acceptance is carried only between calls with equal ones)."""
    clock = watch.clock_key() if hasattr(watch, "clock_key") else ("watch", id(watch))
    return Slot(target, draft, (kind, clock, id(draft), _layout(target), _layout(draft)), setting)


SAMPLING_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
                   "no_repeat_ngram_size")


def sampling_setting(generation_config) -> tuple:
    """The generation settings that shape the target's distribution, and so the drafts' acceptance."""
    return tuple(getattr(generation_config, name, None) for name in SAMPLING_FIELDS)


def forget_pacing() -> None:
    """Drop everything earlier calls learnt: the next call on any pair starts from the cost model's priors."""
    _LEARNT.clear()


def _layout(model) -> tuple | None:
    """The dtype and device of a model's first parameter (None: no parameters)."""
    if not isinstance(model, torch.nn.Module):
        return None
    p = next(model.parameters(), None)
    return None if p is None else (str(p.dtype), str(p.device))
