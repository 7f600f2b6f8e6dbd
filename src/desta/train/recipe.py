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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from desta.config import Params
from desta.train import checkpoint as ckpt
from desta.train.collate import Collator, to_device
from desta.train.data import BucketBatchSampler, GeneratedDataset, RecordIndex
from desta.train.deepspeed import DeepSpeedEngine, Engine, build_engine
from desta.train.features import EncoderCache, supports_cache, transcribe_missing
from desta.train.ranks import global_label_tokens, on_rank0, sum_over_ranks
from desta.train.runtime import deterministic_kernels, pick_device, seed_everything

log = logging.getLogger(__name__)

ModelFactory = Callable[[Params], nn.Module]


def default_model(params: Params) -> nn.Module:
    from desta.models.audio_llm import DeSTA25AudioModel

    return DeSTA25AudioModel.from_params(params.model, params.model_cache_dir(), seed=params.train.seed)


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
        self._skipped = 0

    # ------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        seed_everything(self.cfg.seed)
        self.device = pick_device()
        model = self.model_factory(self.params)
        self.counts = param_counts(model)
        self.engine = build_engine(model, self.cfg, self.device)
        self.assert_trainable_only()
        # not under multi-rank ZeRO-3: a cache miss runs the encoder on one rank, and there a forward needs them all
        zero3_ranks = isinstance(self.engine, DeepSpeedEngine) and self.cfg.zero_stage == 3 and \
            self.engine.world_size > 1
        self.cache = (EncoderCache(self.engine.module, self.cfg.feature_cache_max_mb * 2**20)
                      if self.cfg.feature_cache and supports_cache(model) and not zero3_ranks else None)
        self.train_ds, self.valid_ds = self.load_data()
        self.sampler = BucketBatchSampler(self.train_ds.lengths, self.cfg.micro_batch_size, self.cfg.seed,
                                          self.cfg.bucket_by_length, rank=self.engine.rank,
                                          world_size=self.engine.world_size)
        if len(self.sampler) == 0:
            raise ValueError(f"{self.params.paths.generated}: {len(self.train_ds)} train records are fewer than one "
                             f"micro-batch ({self.cfg.micro_batch_size} x {self.engine.world_size} ranks); lower "
                             "train.micro_batch_size or generate more data")
        self.collate = Collator(self.engine.module.build_inputs)
        self.meta = {"settings": ckpt.trajectory_settings(self.params.model_dump(mode="json"), self.fingerprint,
                                                          self.engine.world_size),
                     "model_hashes": {"frozen": ckpt.tensor_fingerprint(self.engine.module)},
                     "world_size": self.engine.world_size, "strategy": self.cfg.strategy}
        self.meta["settings_hash"] = ckpt.settings_hash(self.meta["settings"])
        if self.engine.is_main:
            log.info("params: %s trainable / %s frozen (%.2f%% trainable); %d train / %d valid records; device %s",
                     f"{self.counts['trainable']:,}", f"{self.counts['frozen']:,}",
                     100 * self.counts["trainable"] / max(1, self.counts["total"]), len(self.train_ds),
                     len(self.valid_ds) if self.valid_ds else 0, self.device)

    def load_data(self) -> tuple[GeneratedDataset, GeneratedDataset | None]:
        """Index the train and valid splits (rank 0 scans the shards, the others receive the index: a few arrays of
        20 bytes per record, never the records) and transcribe, once, clips whose records carry no transcript."""
        gen, eng = self.params.paths.generated, self.engine
        train, valid = on_rank0(lambda: (RecordIndex.build(gen, "train", self.cfg.max_seq_len),
                                         RecordIndex.build(gen, "valid")), eng)
        if train.too_long and eng.is_main:
            log.warning("%d train records exceed train.max_seq_len=%d (estimated tokens); they are skipped",
                        train.too_long, self.cfg.max_seq_len)
        self.fingerprint = ckpt.settings_hash([train.fingerprint, valid.fingerprint])
        paths = sorted(set(train.untranscribed) | set(valid.untranscribed)) if self.cache is not None else []
        # every rank transcribes (only rank 0 writes the cache file): under ZeRO-3 a forward needs all ranks
        transcripts = transcribe_missing(eng.module, paths, self.ckpt_root / "asr_cache.json", write=eng.is_main)
        if not len(valid) and self.engine.is_main:
            log.warning("%s: no records with split 'valid'; validation loss is not computed", gen)
        return GeneratedDataset(train, transcripts), GeneratedDataset(valid, transcripts) if len(valid) else None

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

    def micro_batches(self) -> Iterator[tuple[dict[str, Any], float]]:
        """Endless stream of (this rank's slice of a global micro-batch, label tokens of the whole global micro-batch)
        over epochs, from the saved data position; state.epoch/batch_in_epoch advance. A global batch in which some
        rank has no readable clip is skipped by every rank, so the ranks stay at the same position."""
        while True:
            self.sampler.set_epoch(self.state.epoch, start=self.state.batch_in_epoch)
            for batch in self.loader(self.train_ds, self.sampler):
                self.state.batch_in_epoch += 1
                self.count_skipped(batch)
                total = global_label_tokens(batch, self.engine)
                if total:
                    yield batch, total
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
            t0, loss_sum, samples, tokens = time.perf_counter(), 0.0, 0, 0
            for _ in range(cfg.grad_accum):
                batch, global_tokens = next(batches)
                loss = eng.forward(self.inputs(batch))
                # this rank's share of the global micro-batch's label tokens: scaled by share x ranks, the ranks'
                # averaged gradients are those of the global micro-batch's token-mean loss, as on one rank
                share = batch["n_label_tokens"] / global_tokens if eng.world_size > 1 else 1.0
                eng.backward(loss if eng.world_size == 1 else loss * (share * eng.world_size))
                loss_sum += float(loss.detach()) * share
                samples += batch["n_samples"]
                tokens += batch["n_tokens"]
            loss_sum, samples, tokens, skipped = sum_over_ranks([loss_sum, samples, tokens, self._skipped], eng)
            self._skipped = 0
            lr = eng.lr()
            grad_norm = eng.step()
            st.step += 1
            st.samples += int(samples)
            st.tokens += int(tokens)
            st.skipped_clips += int(skipped)
            dt = time.perf_counter() - t0
            row = {"step": st.step, "train_loss": loss_sum / cfg.grad_accum, "lr": lr, "grad_norm": grad_norm,
                   "samples_per_s": samples / dt, "tokens_per_s": tokens / dt}
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
        """Counted per rank and summed over the ranks at the step (state.skipped_clips is the job's)."""
        if batch["n_skipped"]:
            self._skipped += batch["n_skipped"]
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
            own = float(self.engine.evaluate(inputs)) * n
            stats[:2] += torch.tensor([own, n], dtype=torch.float64)
            shuffled = rotate_audio(inputs) if self.cfg.val_shuffled_audio else None
            if shuffled is not None:
                stats[2:] += torch.tensor([own, float(self.engine.evaluate(shuffled)) * n, n], dtype=torch.float64)
        module.train(was_training)
        stats = torch.tensor(sum_over_ranks(stats.tolist(), self.engine), dtype=torch.float64)
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
        """Restore model, optimizer, scheduler, RNG and data position from the latest matching checkpoint. On another
        number of ranks (same global micro-batch, plain DDP) the data position carries over exactly and each rank's
        RNG is seeded from (seed, step, rank); checkpoint.check_world_size refuses the cases that cannot be exact."""
        found = on_rank0(lambda: ckpt.find_resumable(self.ckpt_root, self.meta), self.engine)
        if found is None:
            return
        path = Path(found)
        self.engine.load(path)
        saved_world = json.loads((path / "meta.json").read_text()).get("world_size")
        if saved_world == self.engine.world_size:
            self.state = ckpt.read_state(path, self.engine.rank)
        else:
            self.state = ckpt.read_trainer_state(path)
            seed_everything(((self.cfg.seed * 1_000_003 + self.state.step) * 1_000_003 + self.engine.rank) % 2**32)
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
    from desta.data.remote import use_io_policy
    from desta.io_retry import RetryPolicy
    from desta.tracking import job_run

    use_io_policy(RetryPolicy.from_config(params.io))  # s3:// clips read while training
    recipe = Recipe(params, model_factory, stop_after)
    with deterministic_kernels(params.train.deterministic):
        try:
            recipe.setup()
            recipe.resume()
            with job_run(params, "train", params.train, recipe.ckpt_root, is_main=recipe.engine.is_main,
                         resumed=recipe.resumed_from is not None,
                         complete=lambda: recipe.state.step >= params.train.max_steps) as tracker:
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


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
