"""Checks of command-line values shared by `speculoos-generate` and `speculoos-bench`: a bad value is refused with
exit status 2 and one line naming the option, before any model is loaded and before any file is created.

Each `*_problem` function returns why a value is bad, or None; the argparse types raise argparse's own error."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import torch

from .dataset.store import unwritable
from .glue.models import MissingModelPackagesError, cache_root, locate_parts, resolve_alias
from .glue.placement import parse_max_memory

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `prog: error: message` (no usage block), with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

    def refuse(self, flag: str, problem: str):
        """Exit 2 naming the option `flag`."""
        self.error(f"argument {flag}: {problem}")


def int_at_least(minimum: int, also: tuple[str, ...] = ()):
    """argparse type: an integer >= minimum, or one of the words `also`."""

    def convert(text: str):
        if text in also:
            return text
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            words = "".join(f" or {w!r}" for w in also)
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{words}, got {text!r}")
        return value

    convert.__name__ = f"integer >= {minimum}"
    return convert


def number_in(low: float, high: float, closed_low: bool = True, closed_high: bool = True):
    """argparse type: a finite number in the interval [low, high] ((low or high) where open)."""
    shown = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = math.isfinite(value) and (value >= low if closed_low else value > low) and \
            (value <= high if closed_high else value < high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text!r}")
        return value

    convert.__name__ = f"number in {shown}"
    return convert


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def model_problem(name: str) -> str | None:
    """Why `name` is not a model to load (an offline alias, a saved model's directory, or a hub id whose config can
    be read), or None. Only a config is read, never weights."""
    alias = resolve_alias(name)
    if alias:
        if any((cache_root() / "hf" / alias).glob("*/config.json")):
            return None
        try:
            locate_parts(alias)
        except MissingModelPackagesError as e:
            return str(e)
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"{name} is a directory without config.json, not a model"
    if path.exists():
        return f"{name} is a file; give a model's directory, a hub id or an offline alias"
    if name.startswith(("/", ".", "~")) or "\\" in name or not HUB_ID.match(name):
        return f"{name}: no such directory (nor a hub id or an offline alias)"
    return _hub_problem(name)


def tokenizer_problem(name: str) -> str | None:
    """Why `name` is not a tokenizer to load, as far as can be told without loading it (a file, a path that does
    not exist), or None."""
    path = Path(name).expanduser()
    if path.exists():
        return None if path.is_dir() else f"{name} is a file; give a tokenizer's directory, a hub id or an alias"
    if resolve_alias(name) or (HUB_ID.match(name) and not name.startswith(".")):
        return None
    return f"{name}: no such directory (nor a hub id or an offline alias)"


def _hub_problem(name: str) -> str | None:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any failure to read the config means the model cannot be loaded
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{name}: no such directory, and no model config from the Hub ({first})"
    return None


def max_memory_problem(spec: str) -> str | None:
    try:
        parse_max_memory(spec)
    except ValueError as e:
        return str(e)
    return None


def device_problem(text: str) -> str | None:
    """Why `text` is not a device of this machine, or None."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        return f"{text!r} is not a device name (cpu, cuda, cuda:1, mps, ...)"
    if device.type == "cpu" or device.type == "meta":
        return f"{text!r}: models cannot run on the meta device" if device.type == "meta" else None
    module = getattr(torch, device.type, None)
    available = getattr(module, "is_available", lambda: False)()
    if not available:
        return f"{text!r}: no {device.type} device on this machine"
    count = getattr(module, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        return f"{text!r}: this machine has {count} {device.type} device(s)"
    return None


def device_map_problem(text: str) -> str | None:
    """A device map is one of accelerate's strategies, a device, or a JSON object {module: device}."""
    if text in DEVICE_MAPS:
        return None
    if text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as e:
            return f"not valid JSON ({e.msg})"
        return None if isinstance(mapping, dict) and mapping else "expected a non-empty JSON object {module: device}"
    problem = device_problem(text)
    if problem is None:
        return None
    return f"expected {', '.join(DEVICE_MAPS)}, a device or a JSON object {{module: device}}; {problem}"


def placement_problems(max_memory, offload_folder, device_map=None, has_device_map: bool = False):
    """(flag, problem) for the target's placement: --target-device-map (where the command has it),
    --target-max-memory, and --offload-folder, which needs one of them."""
    if device_map is not None:
        yield "--target-device-map", device_map_problem(device_map)
    if max_memory is not None:
        yield "--target-max-memory", max_memory_problem(max_memory)
    if offload_folder is not None:
        placed = max_memory is not None or device_map is not None
        needs = " or ".join(["--target-max-memory"] + (["--target-device-map"] if has_device_map else []))
        yield "--offload-folder", folder_problem(offload_folder) if placed else f"needs {needs}"


def folder_problem(text: str) -> str | None:
    """Why a folder cannot be made at `text` (it is a file, or its parent cannot be written), or None."""
    path = Path(text)
    if path.exists():
        return None if path.is_dir() else f"{text} is a file, not a folder"
    return unwritable(path / "x")


def file_problem(text: str) -> str | None:
    """Why a file cannot be written at `text`, or None."""
    path = Path(text)
    if path.is_dir():
        return f"{text} is a directory, not a file"
    return unwritable(path)


def refuse_first(parser: OneLineParser, checks) -> None:
    """Exit 2 at the first (flag, problem) of `checks` whose problem is not None."""
    for flag, problem in checks:
        if problem is not None:
            parser.refuse(flag, problem)
