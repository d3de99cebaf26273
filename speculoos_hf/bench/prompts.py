"""Prompt sets: the shipped classes (package data `speculoos_hf/prompts/*.json`) or a user's JSON file.

A prompt file is a JSON list of strings (class "code") or of `{"kind": class, "text": ...}`. Shipped classes:
"code" (write a function from a one-line request), "copy" (edit, annotate or refactor code given in the prompt,
correct or summarise a passage: the answer copies long spans of the prompt) and "prose".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

# --prompt-class value -> the classes it selects (None: every class in the file)
CLASS_CHOICES = {
    "code": ("code",),
    "coding": ("code",),
    "copy": ("copy",),
    "prose": ("prose",),
    "both": ("code", "copy"),
    "all": None,
}


@dataclass(frozen=True)
class Prompt:
    cls: str  # the prompt class: "code", "copy", "prose", or a user file's kind
    text: str


def read_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Every prompt of a user file, or of the shipped files (in file name order) when `path` is None."""
    if path:
        blobs = [Path(path).read_text()]
    else:
        folder = resources.files("speculoos_hf").joinpath("prompts")
        blobs = [f.read_text() for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".json")]
    items = [p for blob in blobs for p in json.loads(blob)]
    return [Prompt("code", p) if isinstance(p, str) else Prompt(p["kind"], p["text"]) for p in items]


def select_prompts(path: str | Path | None, prompt_class: str, per_class: int | None) -> list[Prompt]:
    """The first `per_class` prompts of each selected class, interleaved class by class (code, copy, code, ...),
    so that the alternation of methods also spreads machine drift over the classes."""
    prompts = read_prompts(path)
    classes = CLASS_CHOICES[prompt_class]
    if classes is None:
        classes = tuple(dict.fromkeys(p.cls for p in prompts))
    groups = [[p for p in prompts if p.cls == c][:per_class] for c in classes]
    missing = [c for c, g in zip(classes, groups) if not g]
    if missing:
        raise SystemExit(f"no prompts of class {', '.join(missing)} in {path or 'the shipped prompt sets'}")
    longest = max(len(g) for g in groups)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def load_prompts(path: str | None, kinds: str, limit: int | None) -> list[str]:
    """Texts of the first `limit` prompts of class `kinds` ("code", "copy", "prose", "both" or "all")."""
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
