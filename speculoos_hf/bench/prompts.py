"""Prompt sets: the shipped classes (package data `speculoos_hf/prompts/*.json`) or a user's JSON file.

A prompt file is a JSON list of strings (class "code") or of `{"kind": class, "text": ...}`, with an optional
`"group"`: prompts of one group are similar requests made one after another (in file order); the first of each
group keeps its class, the later ones are reported apart as class "<class> later". Shipped classes: "code" (write a
function from a one-line request), "copy" (edit, annotate or refactor code given in the prompt, correct or
summarise a passage: the answer copies long spans of the prompt), "edit" (code edits given the code: renames, type
hints, reformatting), "repeat" (groups of similar requests) and "prose".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch

# --prompt-class value -> the classes it selects (None: every class in the file)
CLASS_CHOICES = {
    "code": ("code",),
    "coding": ("code",),
    "copy": ("copy",),
    "prose": ("prose",),
    "edit": ("edit",),
    "repeat": ("repeat",),
    "both": ("code", "copy"),
    "all": None,
}


@dataclass(frozen=True)
class Prompt:
    cls: str  # the prompt class: "code", "copy", "edit", "repeat", "prose", or a user file's kind
    text: str
    group: str | None = None  # similar requests made one after another share a group


def read_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Every prompt of a user file, or of the shipped files (in file name order) when `path` is None."""
    if path:
        blobs = [Path(path).read_text()]
    else:
        folder = resources.files("speculoos_hf").joinpath("prompts")
        blobs = [f.read_text() for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".json")]
    items = [p for blob in blobs for p in json.loads(blob)]
    return [Prompt("code", p) if isinstance(p, str) else Prompt(p["kind"], p["text"], p.get("group")) for p in items]


def select_prompts(path: str | Path | None, prompt_class: str, per_class: int | None) -> list[Prompt]:
    """The first `per_class` prompts of each selected class (of a grouped class: its first `per_class` groups),
    interleaved class by class (code, copy, code, ...) so that the alternation of methods also spreads machine drift
    over the classes; the later prompts of a group, still after the earlier ones, are relabelled "<class> later"."""
    prompts = read_prompts(path)
    classes = CLASS_CHOICES[prompt_class]
    if classes is None:
        classes = tuple(dict.fromkeys(p.cls for p in prompts))
    chosen = [_first(per_class, [p for p in prompts if p.cls == c]) for c in classes]
    missing = [c for c, g in zip(classes, chosen) if not g]
    if missing:
        raise SystemExit(f"no prompts of class {', '.join(missing)} in {path or 'the shipped prompt sets'}")
    longest = max(len(g) for g in chosen)
    return label_later([g[i] for i in range(longest) for g in chosen if i < len(g)])


def _first(n: int | None, prompts: list[Prompt]) -> list[Prompt]:
    """The first n prompts, or where the prompts are grouped, every prompt of the first n groups."""
    groups = list(dict.fromkeys(p.group for p in prompts))
    if n is None or groups == [None]:
        return prompts[:n]
    keep = set(groups[:n])
    return [p for p in prompts if p.group in keep]


def label_later(prompts: list[Prompt]) -> list[Prompt]:
    """The same prompts; a grouped prompt that is not the first of its group gets class "<class> later"."""
    seen: set = set()
    out = []
    for p in prompts:
        key = (p.cls, p.group)
        later = p.group is not None and key in seen
        seen.add(key)
        out.append(replace(p, cls=f"{p.cls} later") if later else p)
    return out


def load_prompts(path: str | None, kinds: str, limit: int | None) -> list[str]:
    """Texts of the first `limit` prompts of class `kinds` (a `CLASS_CHOICES` key such as "code" or "both")."""
    return [p.text for p in select_prompts(path, kinds, limit)]


def encode_text(tokenizer, text: str, chat: bool) -> str:
    """The prompt as the model sees it: wrapped in the chat template when the tokenizer has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def encode(tokenizer, text: str, chat: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [1, L], attention_mask [1, L]) of one prompt."""
    enc = tokenizer(encode_text(tokenizer, text, chat), return_tensors="pt")
    return enc.input_ids, enc.attention_mask
