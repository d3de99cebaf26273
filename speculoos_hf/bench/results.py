"""Saved result JSONs (`benchmarks/<machine kind>/*.json`) as objects: which file, which machine, how it was made,
and the figures of one chosen row, whatever wrote the file (a benchmark run, `--table`, `--profile`, a script, or
figures transcribed from a colleague's report)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .report import method_label

FAST_BF16 = ("avx512_bf16", "amx_bf16")  # CPU flags under which a bf16 pass over several tokens costs about one
KINDS = ("flat-pass CPU", "AVX2-only CPU", "GPU")  # machine kinds, in the order the summary shows them
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "float32"}
ASSISTED = "transformers' assisted generation, its defaults"
LOOKUP = "transformers' prompt lookup"


@dataclass(frozen=True)
class Machine:
    """What a result file says about its machine (the name as recorded, and the structured fields)."""

    name: str
    cpu_model: str
    flags: tuple[str, ...]
    cores: int | None
    torch: str | None
    gpu: str | None
    flags_recorded: bool = True  # False: the flags were named afterwards, not read from the machine

    @classmethod
    def of(cls, data: dict) -> "Machine":
        recorded = data.get("machine")
        info = recorded if isinstance(recorded, dict) else data.get("machine_info") or {}
        name = recorded.get("name", "") if isinstance(recorded, dict) else recorded or ""
        return cls(name, info.get("cpu_model", ""), tuple(info.get("cpu_flags") or ()), info.get("cpu_count"),
                   info.get("torch"), info.get("cuda_device"), info.get("cpu_flags_recorded", True))

    @property
    def kind(self) -> str:
        if self.gpu:
            return "GPU"
        return "flat-pass CPU" if any(f in self.flags for f in FAST_BF16) else "AVX2-only CPU"

    @property
    def short(self) -> str:
        """e.g. "Intel Xeon, AVX-512 BF16 + AMX, 2 cores"."""
        if self.gpu:
            return self.gpu
        model = self.cpu_model.replace("(R)", "").replace(" Processor", "").strip() or "CPU"
        isa = " + ".join(label for flag, label in (("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX"))
                         if flag in self.flags) or ("AVX2 only" if "avx2" in self.flags else "flags not recorded")
        isa += "" if self.flags_recorded else " (named afterwards)"
        return f"{model}, {isa}" + (f", {self.cores} cores" if self.cores else "")


@dataclass(frozen=True)
class ResultFile:
    """One result JSON; `path` is relative to the benchmarks folder (posix)."""

    path: str
    data: dict

    @property
    def kind(self) -> str:
        d = self.data
        if "batches" in d:
            return "profile"
        if "reported" in d:
            return "reported"
        if "answers" in d:
            return "answers"
        return "benchmark" if "machine" in d and isinstance(d.get("results"), list) and "kind" in d["results"][0] \
            else "script"

    @property
    def machine(self) -> Machine:
        return Machine.of(self.data)

    @property
    def dtype(self) -> str:
        """The target's dtype, and the draft's where it differs (int8: the draft's int8 copy)."""
        d = self.data
        target = DTYPES.get(d.get("dtype"), d.get("dtype") or "?")
        draft = "int8" if d.get("draft_int8") else DTYPES.get(d.get("draft_dtype") or d.get("dtype"), target)
        return target if draft == target else f"{target}, {draft} draft"

    def field(self, key: str) -> str:
        return str(self.data.get(key, "not recorded"))


def load_results(root: Path) -> list[ResultFile]:
    """Every JSON in the folders of `root` (one folder per machine kind), in path order."""
    paths = sorted(root.glob("*/*.json"))
    return [ResultFile(p.relative_to(root).as_posix(), json.loads(p.read_text())) for p in paths]


@dataclass(frozen=True)
class Figure:
    """One headline row: `what` was measured (or `predicted` by a profile), in `file`; speedup over the target
    alone, over transformers' own method (`versus`: its name and the ratio), tokens per target pass."""

    what: str
    file: ResultFile
    speedup: float | None
    versus: tuple[str, float] | None
    tokens_per_pass: float | None
    predicted: bool = False


def figure(files: dict[str, ResultFile], spec: dict) -> Figure:
    """The row `spec` names: {"what", "file", and one of "comparison" / "result" / "reported" / "profile": the
    fields that pick the row}; "versus" (with "result"): the method to compare with, in the same file."""
    file = files[spec["file"]]
    for source, read in READERS.items():
        if source in spec:
            return Figure(spec["what"], file, *read(file.data, spec[source], spec.get("versus")),
                          predicted=source == "profile")
    raise ValueError(f"headline {spec['what']!r}: no row selector (one of {list(READERS)})")


def _pick(rows: list[dict], where: dict, what: str) -> dict:
    found = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    if len(found) != 1:
        raise ValueError(f"{what}: {len(found)} rows match {where}")
    return found[0]


def _comparison(data, where, versus):
    r = _pick(data["comparison"], where, "comparison")
    theirs = (ASSISTED, r["vs_assisted_defaults"]) if r.get("vs_assisted_defaults") else None
    return r["vs_target"], theirs, r.get("tokens_per_target_pass")


def _result(data, where, versus):
    rows = data["results"]
    r = _pick(rows, where, "results")
    if versus:
        other = _pick(rows, {**{k: v for k, v in where.items() if k != "method"}, "method": versus}, "versus")
        theirs = (method_label(versus), r["tokens_per_s"] / other["tokens_per_s"])
    elif r.get("speedup_vs_transformers_lookup"):
        theirs = (LOOKUP, r["speedup_vs_transformers_lookup"])
    else:
        theirs = None
    per_pass = r.get("tokens_per_target_forward")
    if per_pass is None and r.get("target_forwards"):
        per_pass = r["new_tokens"] / r["target_forwards"]
    return r.get("speedup", r.get("ratio")), theirs, per_pass


def _reported(data, where, versus):
    r = _pick(data["reported"], where, "reported")
    names = (("vs_assisted_defaults", ASSISTED), ("vs_transformers_lookup", LOOKUP))
    theirs = next(((name, r[key]) for key, name in names if r.get(key)), None)
    return r.get("vs_target"), theirs, r.get("tokens_per_target_pass")


def _profile(data, where, versus):
    b = _pick(data["batches"], where, "batches")
    return b["best_speedup"], None, None


READERS = {"comparison": _comparison, "result": _result, "reported": _reported, "profile": _profile}
