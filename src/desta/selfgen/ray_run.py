"""`desta generate` on a Ray cluster (generate.ray_address set): Ray Data streams the shards to be done through a
pool of `generate.workers` actors, each holding one engine (vLLM on GPUs, HFEngine on CPUs), and the driver (the
machine that runs `desta generate`) is the only writer of the output folder.

Why this shape: the records must not depend on the number of hosts or workers, so an actor runs the very code of
the local path (shards.shard_records: same batches, per-record seeds) on one whole shard per call; each finished
batch comes back to the driver as one Ray Data block and is appended to the shard's `.partial` at once
(shards.PartialShard), so a killed run keeps finished shards and flushed batches, a shard is named by its plan
index only (unique across hosts), and a record is never written twice (ids already flushed are skipped).
Progress: the driver's log and tqdm bar, and Ray's dashboard (Jobs / Ray Data) for the actors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from desta.config import GenerateConfig
from desta.records import write_state
from desta.selfgen.shards import Job, PartialShard, Progress, Runtime, load_engine, shard_records

log = logging.getLogger(__name__)


class ShardGenerator:
    """Ray Data actor: loads the generator once (resolved on its own node and checked against the driver's hash),
    then turns each input row (one shard: jobs + ids already flushed) into one output row per finished batch."""

    def __init__(self, cfg: GenerateConfig, ref: str, cache_dir: str, digest: str, rt: Runtime):
        import ray

        from desta.models.store import model_hash, resolve

        path = resolve(ref, Path(cache_dir))
        if model_hash(path) != digest:
            raise RuntimeError(f"node {ray.util.get_node_ip_address()}: generator {ref} at {path} has hash "
                               f"{model_hash(path)}, the driver's has {digest}; give every node the same model "
                               f"(shared model cache or `desta models fetch {ref}` on each)")
        self.cfg, self.node = cfg, ray.util.get_node_ip_address()
        threads = max(1, int(cfg.ray_cpus_per_worker)) if rt.device == "cpu" else None
        self.engine = load_engine(cfg, str(path), rt, gpu=0, threads=threads)  # Ray sets CUDA_VISIBLE_DEVICES

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for index, jobs_json, done_json in zip(batch["shard"], batch["jobs"], batch["done"], strict=True):
            jobs = [Job(**j) for j in json.loads(jobs_json)]
            for records, tokens in shard_records(self.engine, jobs, set(json.loads(done_json)), self.cfg.seed,
                                                 self.cfg.strip_echo):
                yield {"shard": np.array([int(index)]), "records": np.array([json.dumps(records, ensure_ascii=False)]),
                       "tokens": np.array([tokens]), "node": np.array([self.node])}


def actor_resources(cfg: GenerateConfig, rt: Runtime) -> dict[str, float]:
    """What one engine actor reserves: tensor_parallel_size GPUs (vLLM) or one GPU (HF), else CPUs."""
    if rt.device == "cuda":
        return {"num_gpus": float(cfg.vllm.tensor_parallel_size if cfg.backend == "vllm" else 1), "num_cpus": 1.0}
    return {"num_cpus": float(cfg.ray_cpus_per_worker)}


@contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """One output block per engine batch (a tiny target block size: the driver persists batches as they finish);
    Ray Data's progress bars follow generate.progress. The caller's DataContext is restored afterwards."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size, ctx.enable_progress_bars
    ctx.target_max_block_size, ctx.enable_progress_bars = 1, progress
    try:
        yield
    finally:
        ctx.target_max_block_size, ctx.enable_progress_bars = saved


def generate_on_ray(cfg: GenerateConfig, ref: str, cache_dir: str, digest: str, rt: Runtime,
                    jobs: dict[int, list[Job]], out: Path, state: dict[str, Any]) -> dict[str, int]:
    """Generate the given shards on the connected Ray cluster; same contract as shards.run_shards."""
    shards = {i: PartialShard(out, i, js) for i, js in sorted(jobs.items())}
    progress = Progress(sum(s.missing for s in shards.values()), cfg.progress)

    def finish(index: int, node: str = "driver") -> None:
        shards[index].finish()
        state["shards"][str(index)] = len(jobs[index])
        write_state(out, state)
        log.info("generate: shard %d done (%d records, %s); %d/%d shards", index, len(jobs[index]), node,
                 len(state["shards"]), state["n_shards"])

    for index in [i for i, s in shards.items() if not s.missing]:  # templated-only or fully flushed shards
        finish(index)
    rows = [{"shard": i, "jobs": json.dumps([asdict(j) for j in jobs[i]], ensure_ascii=False),
             "done": json.dumps(sorted(s.done))} for i, s in shards.items() if s.missing]
    try:
        if rows:
            _stream(cfg, rows, (ref, cache_dir, digest, rt), shards, progress, finish)
    finally:
        progress.close()
    return {"records": progress.records, "tokens": progress.tokens}


def _stream(cfg: GenerateConfig, rows: list[dict[str, Any]], engine_args: tuple, shards: dict[int, PartialShard],
            progress: Progress, finish: Any) -> None:
    import ray
    import ray.data

    rt, size = engine_args[-1], min(cfg.workers, len(rows))
    need, have = actor_resources(cfg, rt), ray.cluster_resources()
    short = {k: v * size for k, v in need.items() if v * size > have.get(k.removeprefix("num_").upper(), 0.0)}
    if short:
        log.warning("generate: %d actors need %s but the cluster has %s; the rest wait for resources (lower "
                    "generate.workers, or let an autoscaler add nodes)", size, short,
                    {k: have.get(k, 0.0) for k in ("CPU", "GPU")})
    with _data_context(cfg.progress):
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardGenerator, fn_constructor_args=(cfg, *engine_args), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size), **need)
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for index, records, tokens, node in zip(block["shard"], block["records"], block["tokens"],
                                                        block["node"], strict=True):
                    shard = shards[int(index)]
                    progress.batch(shard.append(json.loads(records)), int(tokens))
                    if not shard.missing:
                        finish(int(index), str(node))
        except Exception as err:  # Ray's task/actor errors and Ray Data's UserCodeException alike
            raise RuntimeError(f"generate on Ray failed ({type(err).__name__}): {err}\nFinished shards and flushed "
                               f"batches are kept: re-run `desta generate` to resume") from err
