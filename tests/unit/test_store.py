"""Offline model store: reference errors, atomic once-only conversion, content hashes, CT2 parsing.

Run: .venv/bin/pytest tests/unit/test_store.py   (no model is converted here; see tests/integration for that)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from desta.models import store
from desta.models.convert_whisper import read_ct2
from desta.models.store import META_FILE, REGISTRY, ModelStoreError, StoreEntry


def test_unknown_reference_lists_the_known_ones(tmp_path):
    with pytest.raises(ModelStoreError, match="unknown model reference 'pypi:gpt-9'.*pypi:whisper-tiny.en"):
        store.resolve("pypi:gpt-9", tmp_path)
    with pytest.raises(ModelStoreError, match="not an existing directory"):
        store.resolve("no such thing!", tmp_path)


def test_missing_package_names_the_pip_command():
    entry = StoreEntry("pypi:x", "llm", "pip install desta-no-such-pkg==1.0", ("desta_no_such_pkg",),
                       ("desta_no_such_pkg/m.gguf",), lambda s, o: o, "test")
    with pytest.raises(ModelStoreError, match=r"'desta_no_such_pkg' is not installed.*`pip install desta-no-such-pkg"):
        store.source_files(entry)


def test_hub_id_offline_and_not_cached_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelStoreError, match="meta-llama/Llama-3.1-8B-Instruct: not in the local Hugging Face cache"):
        store.resolve("meta-llama/Llama-3.1-8B-Instruct", tmp_path)


def test_local_directory_is_used_as_is(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelStoreError, match="without config.json"):
        store.resolve(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    assert store.resolve(str(tmp_path / "m")) == tmp_path / "m"


def test_model_hash_tracks_content_and_names(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.bin").write_bytes(b"abc")
    h1 = store.model_hash(d)
    assert h1.startswith("sha256:") and store._hash_files(d) == h1
    (d / "a.bin").write_bytes(b"abd")
    assert store._hash_files(d) != h1
    (d / "a.bin").write_bytes(b"abc")
    (d / "a.bin").rename(d / "b.bin")
    assert store._hash_files(d) != h1
    (d / META_FILE).write_text(json.dumps({"hash": "sha256:recorded"}))
    assert store.model_hash(d) == "sha256:recorded"  # converted dirs: read, not recomputed


def _entry(convert) -> StoreEntry:
    # a real installed file as the "wheel" source: the desta package's own __init__.py
    return StoreEntry("pypi:test-model", "llm", "pip install desta", ("desta",), ("desta/__init__.py",), convert, "t")


def test_conversion_is_atomic_once_and_hashed(tmp_path, monkeypatch):
    calls = []

    def convert(sources: list[Path], out: Path) -> Path:
        calls.append(out)
        (out / "config.json").write_text(sources[0].read_text()[:20])
        return out

    monkeypatch.setitem(REGISTRY, "pypi:test-model", _entry(convert))
    path = store.resolve("pypi:test-model", tmp_path)
    assert path == tmp_path / "test-model" and (path / "config.json").is_file()
    meta = json.loads((path / META_FILE).read_text())
    assert meta["ref"] == "pypi:test-model" and meta["hash"] == store._hash_files(path)
    assert store.resolve("pypi:test-model", tmp_path) == path and len(calls) == 1  # converted once
    assert calls[0] != path  # written into a temp dir first
    assert [p.name for p in tmp_path.iterdir()] == ["test-model"]  # no temp dirs left
    assert store.list_models(tmp_path)[0]["ref"] == "pypi:smollm2-135m-instruct"


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def convert(sources: list[Path], out: Path) -> Path:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("converter crashed")

    monkeypatch.setitem(REGISTRY, "pypi:test-model", _entry(convert))
    with pytest.raises(RuntimeError, match="converter crashed"):
        store.resolve("pypi:test-model", tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "test-model").mkdir()  # an interrupted manual copy: refused with the fix
    with pytest.raises(ModelStoreError, match="delete the folder"):
        store.resolve("pypi:test-model", tmp_path)


def _ct2_blob(variables: dict[str, tuple[int, np.ndarray]], aliases: dict[str, str], spec: str = "WhisperSpec",
              version: int = 6) -> bytes:
    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<H", len(b) + 1) + b + b"\0"

    out = struct.pack("<I", version) + s(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, (code, arr) in variables.items():
        raw = arr.tobytes()
        out += s(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        out += struct.pack("<B", code) + struct.pack("<I", len(raw)) + raw
    out += struct.pack("<I", len(aliases)) + b"".join(s(a) + s(t) for a, t in aliases.items())
    return out


def test_read_ct2_dtypes_shapes_and_aliases():
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    bf16 = (np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    blob = _ct2_blob({"decoder/embeddings/weight": (4, w), "encoder/num_heads": (3, np.array(6, np.int32)),
                      "x/bf16": (5, bf16)}, {"decoder/projection/weight": "decoder/embeddings/weight"})
    v = read_ct2(blob)
    np.testing.assert_array_equal(v["decoder/projection/weight"], w)
    assert int(v["encoder/num_heads"]) == 6
    np.testing.assert_array_equal(v["x/bf16"], np.array([1.5, -2.0], np.float32))
    with pytest.raises(ValueError, match="spec 'TransformerSpec' is not a Whisper model"):
        read_ct2(_ct2_blob({}, {}, spec="TransformerSpec"))
    with pytest.raises(ValueError, match="binary version 3"):
        read_ct2(_ct2_blob({}, {}, version=3))
    with pytest.raises(ValueError, match="int8-quantized"):
        read_ct2(_ct2_blob({"a/weight_scale": (0, np.ones(2, np.float32))}, {}))
