"""Training strategies behind one small engine interface: plain PyTorch (DDP under torchrun) or DeepSpeed ZeRO.

`build_ds_config(cfg)` turns the `train:` section of params.yaml into a DeepSpeed JSON config (never hand-kept);
`python -m desta.train.deepspeed --out infra/deepspeed/` writes the ZeRO-2/ZeRO-3 examples from params.yaml.
The recipe (desta.train.recipe) only calls `Engine.forward/backward/step/save/load`, whichever strategy is set.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from desta.config import TrainConfig
from desta.train.schedule import build_optimizer, build_scheduler, param_groups, schedule_fn

log = logging.getLogger(__name__)

SINGLE_PROCESS_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
TRAINABLE_FILE = "trainable.safetensors"  # the name DeSTA25AudioModel.save_pretrained uses too


def build_ds_config(cfg: TrainConfig, world_size: int = 1, on_cpu: bool | None = None) -> dict[str, Any]:
    """DeepSpeed config from params: micro batch, accumulation, clipping, AdamW (paper betas/decay), warmup + decay
    schedule, bf16/fp16, ZeRO stage (2 or 3) with optional CPU optimizer offload."""
    on_cpu = (not torch.cuda.is_available()) if on_cpu is None else on_cpu
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "overlap_comm": not on_cpu, "contiguous_gradients": True,
                            "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7}
    if cfg.zero_stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "stage3_prefetch_bucket_size": 5e7,
                     "stage3_param_persistence_threshold": 1e5})
        zero.pop("allgather_bucket_size")
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    sched_type = {"cosine": "WarmupCosineLR", "linear": "WarmupDecayLR", "constant": "WarmupLR"}[cfg.lr_schedule]
    sched_params: dict[str, Any] = {"warmup_num_steps": cfg.warmup_steps, "warmup_type": "linear"}
    if cfg.lr_schedule == "cosine":
        sched_params.update({"total_num_steps": cfg.max_steps, "warmup_min_ratio": 0.0,
                             "cos_min_ratio": cfg.min_lr_ratio})
    else:
        sched_params.update({"warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr})
        if cfg.lr_schedule == "linear":
            sched_params["total_num_steps"] = cfg.max_steps
    adam = {"lr": cfg.lr, "betas": list(cfg.betas), "eps": 1e-8, "weight_decay": cfg.weight_decay}
    if on_cpu and not cfg.offload_optimizer:
        adam["torch_adam"] = True  # plain torch AdamW: no JIT-compiled fused op on CPU
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "optimizer": {"type": "AdamW", "params": adam},
        "scheduler": {"type": sched_type, "params": sched_params},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class Engine:
    """What the recipe drives. `forward` calls `module(**batch, loss_only=True)` and returns its `.loss` (the model
    needs no logits for training); `backward` takes one micro-batch loss; `step` ends an optimizer step and returns
    the global grad norm (before clipping)."""

    module: nn.Module
    rank: int = 0
    world_size: int = 1

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a validation batch (called under no_grad)."""
        return self.forward(batch)

    def step(self) -> float:
        raise NotImplementedError

    def lr(self) -> float:
        raise NotImplementedError

    def save(self, ckpt_dir: Path) -> None:
        """Write the trainable tensors + optimizer + scheduler states into ckpt_dir (all ranks call it)."""
        raise NotImplementedError

    def load(self, ckpt_dir: Path) -> None:
        raise NotImplementedError

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def close(self) -> None:
        raise NotImplementedError


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    if hasattr(module, "trainable_state_dict"):
        return module.trainable_state_dict()
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k in names}


def save_trainable(module: nn.Module, ckpt_dir: Path) -> None:
    """trainable.safetensors; for the composite (a module with a `config`) through its save_pretrained, which
    also writes desta_config.json, so the checkpoint is a model dir that chat and evaluate load."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(module, "save_pretrained") and hasattr(getattr(module, "config", None), "model_dump"):
        module.save_pretrained(ckpt_dir)
        return
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in _trainable_state(module).items()}
    save_file(tensors, str(ckpt_dir / TRAINABLE_FILE), metadata={"format": "pt"})


def load_trainable(module: nn.Module, ckpt_dir: Path, device: torch.device) -> None:
    from safetensors.torch import load_file

    path = ckpt_dir / TRAINABLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; delete the checkpoint dir to start fresh")
    missing, unexpected = module.load_state_dict(load_file(str(path), device=str(device)), strict=False)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    lost = sorted(trainable & set(missing))
    if unexpected or lost:
        raise RuntimeError(f"{path} does not fit the model (missing {lost[:5]}, unexpected {unexpected[:5]}); delete "
                           "the checkpoint dir to start fresh")


def deepspeed_safe_globals() -> list[Any]:
    """The DeepSpeed classes its ZeRO checkpoints hold besides tensors (loss scaler, stage enum, fragment
    addresses); allow-listed for torch.load(weights_only=True), nothing else is."""
    found: list[Any] = []
    for module, names in (("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
                          ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
                          ("deepspeed.utils.tensor_fragment", ("fragment_address",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return found


class TorchEngine(Engine):
    """Plain PyTorch: AdamW + LambdaLR, clipping, autocast for bf16/fp16; DDP when launched by torchrun."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.rank, self.world_size, self.owns_group = _init_distributed("nccl" if device.type == "cuda" else "gloo")
        self.module = model.to(device)
        self.model: nn.Module = model
        if self.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self._micro = 0

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        dtype = autocast_dtype(self.cfg.precision)
        ctx = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        sync = self.world_size == 1 or (self._micro + 1) % self.cfg.grad_accum == 0
        no_sync = self.model.no_sync() if not sync else contextlib.nullcontext()
        with ctx, no_sync:
            return self.model(**batch, loss_only=True).loss

    def evaluate(self, batch: dict[str, Any]) -> torch.Tensor:
        """On the bare module: no DDP hooks or buffer broadcasts, so ranks need not run the same number of
        validation batches (a rank whose slice holds only corrupt clips skips it)."""
        dtype = autocast_dtype(self.cfg.precision)
        with torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            return self.module(**batch, loss_only=True).loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.cfg.grad_accum).backward()  # DDP syncs only where forward allowed it
        self._micro += 1

    def step(self) -> float:
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def close(self) -> None:
        if self.owns_group:
            _destroy_group()

    def save(self, ckpt_dir: Path) -> None:
        if not self.is_main:
            return
        save_trainable(self.module, ckpt_dir)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict()}, ckpt_dir / "optim.pt")

    def load(self, ckpt_dir: Path) -> None:
        from desta.train.checkpoint import safe_torch_load

        load_trainable(self.module, ckpt_dir, self.device)
        opt = safe_torch_load(ckpt_dir / "optim.pt", map_location=self.device)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        self.scaler.load_state_dict(opt["scaler"])


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO-2/3 from the generated config; the recipe's LambdaLR schedule is handed in as a client
    scheduler so both strategies follow the same lr curve (the config's `scheduler` block is for standalone use)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device):
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        for k, v in SINGLE_PROCESS_ENV.items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        _jit_safe_arch_list(os.environ)
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.cfg, self.device = cfg, device
        ds_config = build_ds_config(cfg, self.world_size, on_cpu=device.type != "cuda")
        ds_config.pop("scheduler")
        lam = schedule_fn(cfg)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=param_groups(model, cfg.weight_decay), config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lam))
        self.module = self.engine.module

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.cfg.precision in ("bf16", "fp16"):
            dt = autocast_dtype(self.cfg.precision)
            batch = {k: v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        return self.engine(**batch, loss_only=True).loss

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self._lr = float(self.scheduler.get_last_lr()[0])  # the lr of this update; the boundary step advances it
        self.engine.step()  # a no-op for the optimizer except on accumulation boundaries

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        """The lr the step that just ended used (as TorchEngine.lr() before its step), not the next one."""
        return self._lr

    def save(self, ckpt_dir: Path) -> None:
        with self.gathered():  # ZeRO-3: every rank takes part in the gather, rank 0 writes
            if self.is_main:
                save_trainable(self.module, ckpt_dir)
        self.engine.save_checkpoint(str(ckpt_dir), tag="ds", exclude_frozen_parameters=True)

    def load(self, ckpt_dir: Path) -> None:
        from desta.train.checkpoint import safe_torch_load

        allow = deepspeed_safe_globals()  # DeepSpeed's own torch.load unpickles anything: replace it
        self.engine.checkpoint_engine.load = lambda path, map_location=None: safe_torch_load(path, map_location, allow)
        path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag="ds", load_module_strict=False,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"{ckpt_dir}: no DeepSpeed checkpoint (tag 'ds'); delete the dir to start fresh")

    def close(self) -> None:
        """DeepSpeed keeps its own handle on the process group, so it stays up until the process exits (a second
        run in the same process reuses it); destroying it at exit avoids gloo's abort-at-teardown."""
        self.engine.destroy()
        if not getattr(DeepSpeedEngine, "_atexit", False):
            atexit.register(_destroy_group)
            DeepSpeedEngine._atexit = True

    def gathered(self) -> contextlib.AbstractContextManager:
        """Under ZeRO-3 the trainable weights are partitioned: gather them (rank 0) before save_pretrained."""
        if self.cfg.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        params = [p for p in self.module.parameters() if p.requires_grad]
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _jit_safe_arch_list(env: dict[str, str] | os._Environ) -> None:
    """DeepSpeed's JIT op builder (FusedAdam, CPUAdam) parses TORCH_CUDA_ARCH_LIST as numbers and dies on the
    arch-specific suffixes CUDA images set for Hopper/Blackwell ("9.0a", "10.0f": `invalid literal for int()`).
    Those suffixes only matter for wgmma/TMA kernels, not for these ops, so drop them (a +PTX suffix stays)."""
    raw = env.get("TORCH_CUDA_ARCH_LIST", "")
    archs = [a for a in re.split(r"[;\s]+", raw) if a]
    fixed = list(dict.fromkeys(re.sub(r"^(\d+\.\d+)[a-z]+", r"\1", a) for a in archs))
    if fixed != archs:
        log.info("TORCH_CUDA_ARCH_LIST %r -> %r for DeepSpeed's JIT op builder", raw, ";".join(fixed))
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(fixed)


def _destroy_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _init_distributed(backend: str) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group) from torchrun's env vars."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
        created = True
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), created
    return 0, 1, created


def build_engine(model: nn.Module, cfg: TrainConfig, device: torch.device) -> Engine:
    """The `train.strategy` switch."""
    if cfg.strategy == "deepspeed":
        return DeepSpeedEngine(model, cfg, device)
    return TorchEngine(model, cfg, device)


def write_examples(params_path: str, out_dir: str, overrides: list[str] | None = None,
                   world_size: int = 8) -> list[Path]:
    """Write ds_zero2.json and ds_zero3.json generated from params.yaml's `train:` section (+ overrides; GPU, bf16)."""
    from desta.config import load_params

    cfg = load_params(params_path, overrides).train
    written = []
    for stage in (2, 3):
        c = cfg.model_copy(update={"zero_stage": stage, "precision": "bf16", "strategy": "deepspeed"})
        path = Path(out_dir) / f"ds_zero{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(build_ds_config(c, world_size=world_size, on_cpu=False), indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="write DeepSpeed configs generated from params.yaml")
    ap.add_argument("-p", "--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting first, e.g. -S train.lr=1e-4 -S train.warmup_steps=5000")
    ap.add_argument("--world-size", type=int, default=8, help="GPUs in total (sets train_batch_size)")
    ap.add_argument("--out", default="infra/deepspeed")
    args = ap.parse_args(argv)
    for p in write_examples(args.params, args.out, args.overrides, args.world_size):
        print(p)


if __name__ == "__main__":
    main()
