"""`desta train` (DVC stage `train`): train the DeSTA2.5 connector (+ optional LoRA) on the self-generated set.

    desta train [-S train.strategy=deepspeed] [-S train.max_steps=50]
    deepspeed --num_gpus 8 --module --no_local_rank desta.cli train   # multi-GPU (torchrun -m desta.cli too)

An explicit recipe: setup -> (resume) -> train loop with periodic validation loss and checkpoints -> save -> cleanup.
Only trainable tensors reach the optimizer and the checkpoints; a resumed run reproduces the uninterrupted losses.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from desta.config import Params
from desta.train import checkpoint as ckpt
from desta.train.collate import Collator, to_device
from desta.train.data import BucketBatchSampler, GeneratedDataset, length_estimate, read_generated
from desta.train.deepspeed import DeepSpeedEngine, Engine, build_engine
from desta.train.features import EncoderCache, fill_transcripts, supports_cache

log = logging.getLogger(__name__)

ModelFactory = Callable[[Params], nn.Module]


def default_model(params: Params) -> nn.Module:
    from desta.models.audio_llm import DeSTA25AudioModel

    return DeSTA25AudioModel.from_params(params.model, params.model_cache_dir(), seed=params.train.seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_kernels(on: bool) -> Iterator[None]:
    """train.deterministic: inside, PyTorch picks deterministic kernels only (an op that has none raises a
    RuntimeError naming it) and cuDNN does not autotune; CUBLAS_WORKSPACE_CONFIG is set for cuBLAS's
    reproducible mode (it must precede the process's first cuBLAS call, so set it in the environment yourself when
    something used CUDA before training). The previous settings are restored on exit."""
    if not on:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


class Recipe:
    """One training run. `stop_after` (steps) ends the loop early as a preemption would, after the checkpoint logic
    of that step ran (tests use it to interrupt and resume)."""

    def __init__(self, params: Params, model_factory: ModelFactory = default_model, stop_after: int | None = None):
        self.params, self.cfg = params, params.train
        self.model_factory, self.stop_after = model_factory, stop_after
        self.ckpt_root = Path(params.paths.checkpoints)
        self.state = ckpt.TrainerState()
        self.resumed_from: str | None = None
        self.engine: Engine | None = None

    # ------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        seed_everything(self.cfg.seed)
        self.device = pick_device()
        model = self.model_factory(self.params)
        self.counts = param_counts(model)
        self.engine = build_engine(model, self.cfg, self.device)
        self.assert_trainable_only()
        self.cache = EncoderCache(self.engine.module) if self.cfg.feature_cache and supports_cache(model) else None
        self.train_ds, self.valid_ds = self.load_data()
        self.sampler = BucketBatchSampler(self.train_ds.lengths, self.cfg.micro_batch_size, self.cfg.seed,
                                          self.cfg.bucket_by_length, rank=self.engine.rank,
                                          world_size=self.engine.world_size)
        if len(self.sampler.epoch_batches()) == 0:
            raise ValueError(f"{self.params.paths.generated}: {len(self.train_ds)} train records are fewer than one "
                             f"micro-batch ({self.cfg.micro_batch_size} x {self.engine.world_size} ranks); lower "
                             "train.micro_batch_size or generate more data")
        self.collate = Collator(self.engine.module.build_inputs)
        self.meta = {"settings": ckpt.trajectory_settings(self.params.model_dump(mode="json"), self.fingerprint),
                     "model_hashes": {"frozen": ckpt.tensor_fingerprint(self.engine.module)},
                     "world_size": self.engine.world_size, "strategy": self.cfg.strategy}
        self.meta["settings_hash"] = ckpt.settings_hash(self.meta["settings"])
        if self.engine.is_main:
            log.info("params: %s trainable / %s frozen (%.2f%% trainable); %d train / %d valid records; device %s",
                     f"{self.counts['trainable']:,}", f"{self.counts['frozen']:,}",
                     100 * self.counts["trainable"] / max(1, self.counts["total"]), len(self.train_ds),
                     len(self.valid_ds) if self.valid_ds else 0, self.device)

    def load_data(self) -> tuple[GeneratedDataset, GeneratedDataset | None]:
        gen = self.params.paths.generated
        train = read_generated(gen, ["train"])
        valid = read_generated(gen, ["valid"])
        too_long = [r for r in train if length_estimate(r) > self.cfg.max_seq_len]
        if too_long:
            log.warning("%d train records exceed train.max_seq_len=%d (estimated tokens); they are skipped",
                        len(too_long), self.cfg.max_seq_len)
            train = [r for r in train if length_estimate(r) <= self.cfg.max_seq_len]
        self.fingerprint = ckpt.settings_hash([r.get("id") for r in train] + [len(train), len(valid)])
        if self.cache is not None:
            fill_transcripts(self.engine.module, train + valid, self.ckpt_root / "asr_cache.json",
                             write=self.engine.is_main)
        if not valid:
            log.warning("%s: no records with split 'valid'; validation loss is not computed", gen)
        return (GeneratedDataset(train, where=gen),
                GeneratedDataset(valid, where=gen) if valid else None)

    def assert_trainable_only(self) -> None:
        """Frozen parameters never reach the optimizer."""
        module = self.engine.module
        trainable = {id(p) for p in module.parameters() if p.requires_grad}
        opt = getattr(self.engine, "optimizer", None)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]} if opt is not None else trainable
        if isinstance(self.engine, DeepSpeedEngine):
            return  # ZeRO flattens the groups it was given (param_groups() holds trainable tensors only)
        if in_opt != trainable:
            raise AssertionError(f"optimizer holds {len(in_opt)} tensors but the model has {len(trainable)} trainable")

    # ------------------------------------------------------------------------------------------------- data
    def loader(self, ds: Dataset, sampler: BucketBatchSampler) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(ds, batch_sampler=sampler, collate_fn=self.collate, num_workers=workers,
                          generator=torch.Generator().manual_seed(self.cfg.seed),
                          prefetch_factor=2 if workers else None, persistent_workers=False)

    def micro_batches(self) -> Iterator[dict[str, Any]]:
        """Endless stream over epochs, starting at the saved data position; state.epoch/batch_in_epoch advance."""
        while True:
            self.sampler.set_epoch(self.state.epoch, start=self.state.batch_in_epoch)
            for batch in self.loader(self.train_ds, self.sampler):
                self.state.batch_in_epoch += 1
                self.count_skipped(batch)
                if batch["n_samples"]:
                    yield batch
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    # ------------------------------------------------------------------------------------------------- loop
    def train(self, tracker: Any) -> None:
        cfg, st, eng = self.cfg, self.state, self.engine
        if st.step == 0 and st.step0_val_loss is None:
            row0 = {"step": 0, **self.validate()}
            st.step0_val_loss = st.best_val_loss = row0["val_loss"]
            self.record(tracker, row0)
        bar = _progress(cfg.max_steps, st.step, enabled=cfg.progress and eng.is_main)
        batches = self.micro_batches()
        eng.module.train()
        while st.step < cfg.max_steps:
            t0, losses, samples, tokens = time.perf_counter(), [], 0, 0
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                loss = eng.forward(self.inputs(batch))
                eng.backward(loss)
                losses.append(float(loss.detach()))
                samples += batch["n_samples"]
                tokens += batch["n_tokens"]
            lr = eng.lr()
            grad_norm = eng.step()
            st.step += 1
            st.samples += samples
            st.tokens += tokens
            dt = time.perf_counter() - t0
            row = {"step": st.step, "train_loss": sum(losses) / len(losses), "lr": lr, "grad_norm": grad_norm,
                   "samples_per_s": samples * eng.world_size / dt, "tokens_per_s": tokens * eng.world_size / dt}
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(f"step {st.step}: loss is {row['train_loss']}; lower train.lr or use fp32")
            if st.step % cfg.eval_every == 0 or st.step == cfg.max_steps:
                row |= self.validate()
                if row["val_loss"] is not None and (st.best_val_loss is None or row["val_loss"] < st.best_val_loss):
                    st.best_val_loss = row["val_loss"]
            self.record(tracker, row, bar)
            if st.step % cfg.save_every == 0 or st.step == cfg.max_steps:
                self.save_checkpoint()
            if self.stop_after is not None and st.step >= self.stop_after:
                break
        if bar is not None:
            bar.close()

    def count_skipped(self, batch: dict[str, Any]) -> None:
        if batch["n_skipped"]:
            self.state.skipped_clips += batch["n_skipped"]
            log.warning("skipped %d corrupt clip(s): %s", batch["n_skipped"], "; ".join(batch["skipped"]))

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The model's tensors on the device; with the feature cache, `audio_hidden` replaces `input_features`."""
        inputs = batch["inputs"]
        if self.cache is not None:
            inputs = self.cache.attach(inputs, batch["keys"])
        return to_device(inputs, self.device)

    @torch.no_grad()
    def validate(self) -> dict[str, float | None]:
        """{"val_loss": mean response-token loss over the valid split (fixed order, no dropout; consumes no RNG)}.
        With train.val_shuffled_audio also the same loss with every batch's audio windows rotated by one record
        (each response scored against another clip's audio, its own text kept) and `audio_gap` = shuffled - own:
        a falling val_loss with audio_gap near 0 means the connector learned a fixed prompt, not to carry the audio."""
        if self.valid_ds is None:
            return {"val_loss": None}
        module = self.engine.module
        was_training = module.training
        module.eval()
        sampler = BucketBatchSampler(self.valid_ds.lengths, self.cfg.micro_batch_size, seed=0, shuffle=False,
                                     drop_last=False, rank=self.engine.rank, world_size=self.engine.world_size)
        # token-weighted sums: own loss, tokens | on batches whose audio could be rotated: own loss, shuffled, tokens
        stats = torch.zeros(5, dtype=torch.float64)
        for i, batch in enumerate(self.loader(self.valid_ds, sampler)):
            if self.cfg.max_val_batches is not None and i >= self.cfg.max_val_batches:
                break
            if not batch["n_samples"]:
                continue
            inputs, n = self.inputs(batch), batch["n_label_tokens"]
            own = float(self.engine.forward(inputs)) * n
            stats[:2] += torch.tensor([own, n], dtype=torch.float64)
            shuffled = rotate_audio(inputs) if self.cfg.val_shuffled_audio else None
            if shuffled is not None:
                stats[2:] += torch.tensor([own, float(self.engine.forward(shuffled)) * n, n], dtype=torch.float64)
        module.train(was_training)
        if self.engine.world_size > 1:
            torch.distributed.all_reduce(stats)
        out: dict[str, float | None] = {"val_loss": float(stats[0] / stats[1]) if stats[1] > 0 else None}
        if stats[4] > 0:
            out["val_loss_shuffled_audio"] = float(stats[3] / stats[4])
            out["audio_gap"] = float((stats[3] - stats[2]) / stats[4])
        return out

    def record(self, tracker: Any, row: dict[str, Any], bar: Any = None) -> None:
        self.state.history.append(row)
        if not self.engine.is_main:
            return
        step = row["step"]
        tracker.log_metrics({f"train/{k}": v for k, v in row.items() if k != "step" and v is not None}, step=step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("train_loss", "lr", "grad_norm", "samples_per_s")})
        if "val_loss" in row or step % self.cfg.log_every == 0:
            log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                  if k != "step" and isinstance(v, float)))

    # --------------------------------------------------------------------------------------------- save/resume
    def save_checkpoint(self) -> Path:
        tmp = ckpt.begin(self.ckpt_root, self.state.step)
        self.engine.barrier()
        self.engine.save(tmp)
        ckpt.write_rank_state(tmp, self.engine.rank)
        self.engine.barrier()
        final = tmp
        if self.engine.is_main:
            final = ckpt.finish(tmp, self.state, self.meta, self.cfg.keep_checkpoints)
            log.info("checkpoint %s", final)
        self.engine.barrier()
        return final

    def resume(self) -> None:
        """Restore model, optimizer, scheduler, RNG and data position from the latest matching checkpoint."""
        found = ckpt.find_resumable(self.ckpt_root, self.meta) if self.engine.is_main else None
        found = _broadcast(found, self.engine)
        if found is None:
            return
        path = Path(found)
        self.engine.load(path)
        self.state = ckpt.read_state(path, self.engine.rank)
        self.resumed_from = str(path)
        log.info("resumed from %s (step %d, epoch %d, batch %d)", path, self.state.step, self.state.epoch,
                 self.state.batch_in_epoch)

    def save_final(self) -> dict[str, Any]:
        out = Path(self.params.paths.model)
        module = self.engine.module
        gathered = self.engine.gathered() if isinstance(self.engine, DeepSpeedEngine) else None
        if gathered is not None:
            with gathered:
                if self.engine.is_main:
                    module.save_pretrained(out)
        elif self.engine.is_main:
            module.save_pretrained(out)
        summary = self.summary()
        if self.engine.is_main:
            out.mkdir(parents=True, exist_ok=True)
            # no wall-clock figures in the DVC output, so two runs write the same bytes (they go to MLflow)
            steady = {k: v for k, v in summary.items() if k not in ckpt.WALL_CLOCK_KEYS}
            (out / "train_metrics.json").write_text(json.dumps(steady, indent=1))
            write_loss_csv(out / "loss.csv", self.state.history)
        return summary

    def summary(self) -> dict[str, Any]:
        st, hist = self.state, self.state.history
        vals = [r["val_loss"] for r in hist if r.get("val_loss") is not None]
        gaps = [r["audio_gap"] for r in hist if r.get("audio_gap") is not None]
        speed = [r for r in hist if "samples_per_s" in r]  # this process's steps (checkpoints keep no speeds)
        trained = [r for r in hist if "train_loss" in r]
        return {"steps": st.step, "step0_val_loss": st.step0_val_loss, "final_val_loss": vals[-1] if vals else None,
                "best_val_loss": st.best_val_loss, "step0_audio_gap": gaps[0] if gaps else None,
                "final_audio_gap": gaps[-1] if gaps else None,
                "final_train_loss": trained[-1]["train_loss"] if trained else None,
                "samples_per_s": _mean(r["samples_per_s"] for r in speed[1:] or speed),
                "tokens_per_s": _mean(r["tokens_per_s"] for r in speed[1:] or speed),
                "samples_seen": st.samples, "tokens_seen": st.tokens, "skipped_clips": st.skipped_clips,
                "trainable_params": self.counts["trainable"], "frozen_params": self.counts["frozen"],
                "strategy": self.cfg.strategy, "world_size": self.engine.world_size,
                "checkpoint_dir": str(self.ckpt_root), "model_dir": self.params.paths.model,
                "feature_cache_mb": round(self.cache.nbytes() / 2**20, 1) if self.cache is not None else None,
                "resumed_from": self.resumed_from}

    def cleanup(self) -> None:
        if self.engine is not None:
            self.engine.close()


def run_train(params: Params, model_factory: ModelFactory = default_model,
              stop_after: int | None = None) -> dict[str, Any]:
    """Stage entry (CLI, dvc.yaml, Prefect): train, resume automatically, write the model + metrics; returns a
    summary (steps, step-0/final/best val loss, samples/s, tokens/s, checkpoint dir)."""
    from desta.tracking import stage_run

    recipe = Recipe(params, model_factory, stop_after)
    with deterministic_kernels(params.train.deterministic):
        try:
            recipe.setup()
            recipe.resume()
            with stage_run(params, "train", params.train) as tracker:
                tracker.log_params({"model.trainable_params": recipe.counts["trainable"],
                                    "model.frozen_params": recipe.counts["frozen"]})
                recipe.train(tracker)
                summary = recipe.save_final()
                tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)
                                     and not isinstance(v, bool)})
                tracker.log_artifact(Path(params.paths.model) / "loss.csv")
                tracker.log_dict(summary, "train_metrics.json")
            return summary
        finally:
            recipe.cleanup()


def param_counts(model: nn.Module) -> dict[str, int]:
    if hasattr(model, "param_counts"):
        c = dict(model.param_counts())
        if {"trainable", "frozen"} <= c.keys():
            c.setdefault("total", c["trainable"] + c["frozen"])
            return c
    t = sum(p.numel() for p in model.parameters() if p.requires_grad)
    f = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": t, "frozen": f, "total": t + f}


def rotate_audio(inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The batch with its audio windows rotated by one (window i gets window i+1's features and length; token
    positions unchanged), so every record is scored against another clip's audio; None with fewer than 2 windows."""
    present = [k for k in ("audio_hidden", "input_features", "audio_frames") if inputs.get(k) is not None]
    if not present or inputs[present[0]].shape[0] < 2:
        return None
    return {k: torch.roll(v, -1, dims=0) if k in present else v for k, v in inputs.items()}


LOSS_COLUMNS = ("train_loss", "val_loss", "val_loss_shuffled_audio")


def write_loss_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """step + LOSS_COLUMNS (DVC plots); empty cells where a value was not measured at that step."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *LOSS_COLUMNS])
        for r in history:
            w.writerow([r["step"], *(_fmt(r.get(k)) for k in LOSS_COLUMNS)])


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def _mean(values: Any) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def _broadcast(obj: Any, engine: Engine) -> Any:
    if engine.world_size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
