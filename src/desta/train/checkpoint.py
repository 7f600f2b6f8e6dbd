"""Checkpoints of `desta train`: trainable tensors + optimizer/scheduler (via the engine), trainer state, RNG per
rank, and meta.json carrying the settings and model hashes that made them. Resume picks the latest complete one.

Layout: <paths.checkpoints>/step-00000100/{meta.json, trainer_state.json, rng-rank0.json, trainable.safetensors,
desta_config.json, optim.pt | ds/}. With desta_config.json beside the weights a checkpoint is also a model dir
(`desta chat --model-dir data/checkpoints/step-00000100`, `evaluate.model`).
A checkpoint is written into `step-N.tmp` and renamed when complete, so a crash never leaves a half checkpoint.
Nothing is unpickled on resume: state is JSON, tensors safetensors, and the optimizer file is read with
`torch.load(weights_only=True)` (tensors and plain containers only), so a tampered checkpoint on shared storage is
refused (`CheckpointRefused`) instead of running its code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import pickle
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

FORMAT = 2  # 1: pickled RNG state (refused now; such checkpoints are moved to stale/)

# Per-step figures that vary from run to run: kept in memory (MLflow, the progress bar, this process's summary) but
# never written into a checkpoint or the model dir, so two runs of the same settings write the same bytes.
WALL_CLOCK_KEYS = ("samples_per_s", "tokens_per_s")
# Train keys that do not change the trajectory of losses; a resume may change them freely.
NON_TRAJECTORY_KEYS = {"eval_every", "save_every", "keep_checkpoints", "num_workers", "log_every",
                       "max_val_batches", "feature_cache", "feature_cache_max_mb", "resume", "progress"}


@dataclass
class TrainerState:
    """Where the loop is: optimizer steps done, data position, running figures and the loss curve so far."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global micro-batches of `epoch` already consumed (the same on every rank)
    samples: int = 0
    tokens: int = 0
    skipped_clips: int = 0
    step0_val_loss: float | None = None
    best_val_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # rows of step, train_loss, val_loss, lr, ...


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def trajectory_settings(params_dump: dict[str, Any], data_fingerprint: str, world_size: int) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint (model, train minus bookkeeping keys, data). The
    data order depends on micro_batch_size x ranks (the global micro-batch), not on either alone, so that product
    is compared: a job may resume on another number of ranks when micro_batch_size makes up for it."""
    train = {k: v for k, v in params_dump["train"].items() if k not in NON_TRAJECTORY_KEYS | {"micro_batch_size"}}
    train["global_micro_batch"] = params_dump["train"]["micro_batch_size"] * world_size
    return {"model": params_dump["model"], "train": train, "data": data_fingerprint}


def tensor_fingerprint(module: nn.Module, frozen_only: bool = True, sample: int = 4096) -> str:
    """Cheap identity of the (frozen) backbone weights: name, shape, dtype and the first/last `sample` values of
    every tensor. Detects a different or re-converted model without hashing gigabytes."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        if frozen_only and p.requires_grad:
            continue
        flat = p.detach().reshape(-1)
        if flat.numel() == 0:  # ZeRO-3 partitioned placeholders
            h.update(f"{name}:{tuple(getattr(p, 'ds_shape', p.shape))}".encode())
            continue
        head, tail = flat[:sample], flat[-sample:]
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(torch.cat([head, tail]).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class CheckpointRefused(RuntimeError):
    """A checkpoint file holds something other than tensors and plain containers: tampered or foreign."""


def safe_torch_load(path: Path, map_location: Any = None, allow: list[Any] | None = None) -> Any:
    """torch.load with weights_only=True (plus the `allow`-listed classes, e.g. DeepSpeed's loss scaler); a file
    that needs anything else to unpickle is refused, naming the file and what it asked for."""
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "unsupported" in ln.lower()), "it needs more than tensors to unpickle")
        raise CheckpointRefused(f"{path}: refused to load ({why}); a checkpoint written by desta holds tensors and "
                                "plain values only, so this file was tampered with or comes from elsewhere. Move the "
                                "checkpoint dir away (or delete it) to start fresh") from None


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as JSON-able values (read back without unpickling)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": [version, list(internal), gauss],
                             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (those with meta.json), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if not p.name.endswith(".tmp") and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def begin(root: Path, step: int) -> Path:
    """The temporary dir a checkpoint is written into (all ranks write there)."""
    tmp = root / f"step-{step:08d}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def write_rank_state(tmp: Path, rank: int) -> None:
    (tmp / f"rng-rank{rank}.json").write_text(json.dumps(rng_state()))


def finish(tmp: Path, state: TrainerState, meta: dict[str, Any], keep: int) -> Path:
    """Rank 0: write trainer state + meta, rename tmp -> final, drop the oldest beyond `keep`. Nothing written
    depends on the clock (no per-step speeds, no time stamp), so the checkpoint dir's DVC hash is reproducible."""
    steady = asdict(state)
    steady["history"] = [{k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS} for row in state.history]
    (tmp / "trainer_state.json").write_text(json.dumps(steady, indent=1))
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": state.step, "format": FORMAT}, indent=1))
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(ckpt: Path, rank: int) -> TrainerState:
    """Trainer state + this rank's RNG (restored immediately)."""
    state = TrainerState(**json.loads((ckpt / "trainer_state.json").read_text()))
    rng_file = ckpt / f"rng-rank{rank}.json"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file}: missing; the checkpoint was written by fewer ranks than this run has. "
                                "Resume with the same world size, or delete the checkpoint dir to start fresh")
    set_rng_state(json.loads(rng_file.read_text()))
    return state


def find_resumable(root: Path, expected: dict[str, Any]) -> Path | None:
    """The latest checkpoint whose settings hash and model hashes equal `expected`; mismatching ones are moved to
    <root>/stale/ (kept, never deleted) with a warning saying which setting differs. A checkpoint that differs
    only by the world size is resumed when that can be exact (see check_world_size), else refused."""
    ckpts = list_checkpoints(root)
    if not ckpts:
        return None
    latest = ckpts[-1]
    meta = json.loads((latest / "meta.json").read_text())
    diffs = [k for k in ("settings_hash", "model_hashes") if meta.get(k) != expected.get(k)]
    if meta.get("format") != FORMAT:
        diffs.append(f"format (written by an older desta that pickled its state; format {FORMAT} is needed)")
    changed = _changed_keys(meta.get("settings", {}), expected.get("settings", {}))
    if not diffs or diffs == ["settings_hash"]:
        check_world_size(latest, meta, expected, changed)
    if not diffs:
        return latest
    stale = root / "stale" / time.strftime("%Y%m%d-%H%M%S")
    stale.mkdir(parents=True, exist_ok=True)
    for c in ckpts:
        c.rename(stale / c.name)
    log.warning("%s: checkpoints do not match this run (%s differ%s); moved them to %s and starting fresh",
                root, ", ".join(diffs), f": {', '.join(changed[:8])}" if changed else "", stale)
    return None


def _changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _changed_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def check_world_size(ckpt: Path, meta: dict[str, Any], expected: dict[str, Any], changed: list[str]) -> None:
    """A job resumed on another number of ranks goes on exactly where it stopped when the global micro-batch
    (micro_batch_size x ranks) is the same, because the sampler's global batches and the data position are functions
    of that product. Raises, saying how to resume, when the ranks changed and (a) the product changed too, since
    batches would be re-cut and some records seen twice or skipped, or (b) the strategy is DeepSpeed, whose
    ZeRO optimizer states are partitioned per rank."""
    saved, now = meta.get("world_size"), expected.get("world_size")
    if saved is None or saved == now:
        return
    settings = meta.get("settings", {}).get("train", {})
    micro = settings.get("global_micro_batch")
    if changed == ["train.global_micro_batch"] and micro:
        fix = (f"-S train.micro_batch_size={micro // now}" if micro % now == 0 else
               f"a number of ranks that divides {micro} and train.micro_batch_size = {micro} / ranks")
        raise RuntimeError(
            f"{ckpt}: written by {saved} rank(s) at {micro} records per global micro-batch (train.micro_batch_size "
            f"x ranks); this job has {now} rank(s) and {expected['settings']['train']['global_micro_batch']}, so the "
            f"batches would be cut differently and records seen twice or skipped. Resume with {fix} (or on {saved} "
            f"rank(s) as before), or move {ckpt.parent} away to start fresh")
    if not changed and expected.get("strategy") == "deepspeed":
        raise RuntimeError(
            f"{ckpt}: written by {saved} rank(s) with DeepSpeed ZeRO, whose optimizer states are partitioned per "
            f"rank; this job has {now}. Resume on {saved} rank(s), or move {ckpt.parent} away to start fresh "
            "(DeepSpeed's universal checkpoint, deepspeed.checkpoint.ds_to_universal, is not wired in)")
    if not changed:
        log.info("%s: written by %d rank(s), resumed on %d with the same global micro-batch: the data position "
                 "carries over exactly", ckpt, saved, now)


def read_trainer_state(ckpt: Path) -> TrainerState:
    """Trainer state alone (a resume on another number of ranks: the saved per-rank RNG states do not map)."""
    return TrainerState(**json.loads((ckpt / "trainer_state.json").read_text()))
