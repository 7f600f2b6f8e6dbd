"""The shard runner of `desta generate`: loads an engine, turns a shard's jobs into records, and writes them
(`.partial` appends for resume, then the shard in plan order). Local processes live here; the Ray path
(desta/selfgen/ray_run.py) runs the same `shard_records` in Ray actors and the same `PartialShard` on the driver.

A shard is the unit of resume and of work: finished shards are kept; an interrupted shard keeps its flushed
batches and regenerates only the batches that still miss a record, composed exactly as the uninterrupted run
composed them (engine.pending_groups), with per-record seeds (engine.record_seed).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from desta.config import GenerateConfig
from desta.describe import strip_description_echo
from desta.records import PARTIAL_SUFFIX, rejected_path, shard_path, write_state
from desta.selfgen.engine import Decoding, HFEngine, VLLMEngine, eos_ids, record_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One request: record id, the generator's chat messages, and the finished record minus its response; `fixed`
    jobs (templated targets) already carry their response and never reach the engine."""

    id: str
    messages: list[dict[str, Any]]
    record: dict[str, Any]
    fixed: bool = False


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision the engines run, resolved once by the driver (it goes into the provenance)."""

    device: str  # "cpu" | "cuda"
    dtype: str  # torch dtype name


Report = Callable[[str, int, int], None]  # (event "batch"|"shard", a, b): batch -> (records, tokens); shard -> (i, n)


def visible_gpus(cfg: GenerateConfig) -> int:
    """CUDA devices this machine gives the local engines (0 with generate.device: cpu)."""
    return torch.cuda.device_count() if cfg.device != "cpu" else 0


def resolve_runtime(cfg: GenerateConfig, n_gpus: int) -> Runtime:
    """generate.device / dtype against the GPUs the engines will see (this machine's, or the Ray cluster's)."""
    if cfg.device == "cuda" and n_gpus == 0:
        raise RuntimeError("params.yaml generate.device is 'cuda' but no CUDA device is visible (on this machine or "
                           "the Ray cluster); use auto or cpu")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and n_gpus > 0)
    if cfg.backend == "vllm" and not cuda:
        raise RuntimeError("params.yaml generate.backend is 'vllm' but the engines would run on CPU (no GPU visible "
                           "or generate.device: cpu); vLLM's wheels are built for CUDA: set generate.backend: hf")
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cuda else "float32")
    return Runtime("cuda" if cuda else "cpu", dtype)


def _generation_eos(model_dir: str, tok: Any) -> list[int]:
    from transformers import AutoConfig, GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json: the model config's eos, as transformers falls back to
        eos = AutoConfig.from_pretrained(model_dir).eos_token_id
    return eos_ids(eos, tok)


def load_vllm(cfg: GenerateConfig, model_dir: str, dtype: str) -> VLLMEngine:
    """vllm.LLM with generate.vllm's settings; the tokenizer is transformers' (the one HFEngine uses)."""
    try:
        from vllm import LLM
    except ImportError:
        raise RuntimeError("generate.backend is 'vllm' but vllm is not installed; `pip install -e .[vllm]` on a "
                           "CUDA machine (docs/selfgen.md) or set generate.backend: hf") from None
    from transformers import AutoTokenizer

    v = cfg.vllm
    tok = AutoTokenizer.from_pretrained(model_dir)
    # inside a Ray actor vLLM would otherwise pick its Ray executor and ask the cluster for tp more GPUs
    extra = {"distributed_executor_backend": "mp"} if v.tensor_parallel_size > 1 else {}
    llm = LLM(model=model_dir, tokenizer=model_dir, dtype=dtype, seed=cfg.seed, max_num_seqs=cfg.batch_size,
              tensor_parallel_size=v.tensor_parallel_size, max_model_len=v.max_model_len,
              gpu_memory_utilization=v.gpu_memory_utilization, **extra)
    decoding = Decoding(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p)
    return VLLMEngine(llm, tok, decoding, chunk=cfg.batch_size * 4, eos=_generation_eos(model_dir, tok))


def load_engine(cfg: GenerateConfig, model_dir: str, rt: Runtime, gpu: int = 0,
                threads: int | None = None) -> HFEngine | VLLMEngine:
    """An engine on `cuda:gpu` or the CPU (`threads` torch threads when given)."""
    if cfg.backend == "vllm":
        return load_vllm(cfg, model_dir, rt.dtype)
    from desta.models.store import load_llm

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(f"cuda:{gpu}") if rt.device == "cuda" else torch.device("cpu")
    model, tok = load_llm(model_dir, dtype=getattr(torch, rt.dtype))
    decoding = Decoding(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p)
    return HFEngine(model.to(device), tok, decoding, cfg.batch_size)


def shard_records(engine: HFEngine | VLLMEngine, jobs: list[Job], done: set[str], seed: int,
                  strip_echo: bool) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """The LLM records of a shard that are not in `done`, batch by batch: yields (records, new tokens)."""
    llm = [j for j in jobs if not j.fixed]
    skip = frozenset(i for i, j in enumerate(llm) if j.id in done)
    if len(skip) == len(llm):
        return
    prompts = [engine.encode(j.messages) for j in llm]
    for batch in engine.generate(prompts, [record_seed(seed, j.id) for j in llm], skip):
        records = []
        for o in batch:
            rec = dict(llm[o.index].record)
            rec["response"] = strip_description_echo(o.text) if strip_echo else o.text
            records.append(rec)
        yield records, sum(o.new_tokens for o in batch)


def partial_path(out: Path, index: int) -> Path:
    return shard_path(out, index).with_name(shard_path(out, index).name + PARTIAL_SUFFIX)


def resume_partial(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Records already flushed to an interrupted shard. A torn last line (killed mid-write), duplicate ids and ids
    not in this shard are dropped and the file rewritten without them, so appending after it cannot duplicate."""
    if not path.is_file():
        return {}
    lines = path.read_bytes().split(b"\n")
    kept: dict[str, dict[str, Any]] = {}
    for line in lines[:-1]:  # the piece after the last newline is torn (or empty)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("id") in wanted and rec["id"] not in kept:
            kept[rec["id"]] = rec
    if len(kept) != len(lines) - 1 or lines[-1]:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept.values()), encoding="utf-8")
        tmp.replace(path)
    return kept


def write_final_shard(out: Path, index: int, records: list[dict]) -> None:
    """Write the shard in plan order (tmp + rename). Records whose response is empty (a small generator that only
    recited the seed description, stripped by strip_echo) are not training targets: they go to
    `rejected-NNNNN.jsonl` beside the shard (kept for inspection, counted by `desta validate`), never silently lost."""
    kept, rejected = [], []
    for r in records:
        (kept if str(r.get("response") or "").strip() else rejected).append(r)
    final, rej = shard_path(out, index), rejected_path(out, index)
    if rejected:
        rej.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected), encoding="utf-8")
    elif rej.exists():
        rej.unlink()
    tmp = final.with_name(final.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(final)


class PartialShard:
    """One shard being written by its only writer: batches are appended to `shard-NNNNN.jsonl.partial` (flushed and
    fsynced, ids already there are never written again), then `finish` writes the shard in plan order."""

    def __init__(self, out: Path, index: int, jobs: list[Job]):
        self.out, self.index, self.jobs, self.path = out, index, jobs, partial_path(out, index)
        self.done = resume_partial(self.path, {j.id for j in jobs})
        self.done |= {j.id: j.record for j in jobs if j.fixed}

    @property
    def missing(self) -> int:
        return sum(j.id not in self.done for j in self.jobs)

    def append(self, records: list[dict[str, Any]]) -> int:
        """Persist a batch; returns how many of its records were new."""
        new = [r for r in records if r["id"] not in self.done]
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            fh.flush()
            os.fsync(fh.fileno())
        self.done |= {r["id"]: r for r in new}
        return len(new)

    def finish(self) -> None:
        if self.missing:
            raise RuntimeError(f"shard {self.index}: {self.missing} record(s) were never generated; re-run "
                               f"`desta generate` to resume")
        write_final_shard(self.out, self.index, [self.done[j.id] for j in self.jobs])
        self.path.unlink(missing_ok=True)


def process_shard(engine: HFEngine | VLLMEngine | None, index: int, jobs: list[Job], out: Path,
                  cfg: GenerateConfig, report: Report) -> int:
    """Generate one shard into `out` (resuming its .partial); returns the record count."""
    shard = PartialShard(out, index, jobs)
    if shard.missing and engine is None:
        raise RuntimeError(f"shard {index}: {shard.missing} record(s) need the generator but no engine was loaded")
    if shard.missing:
        for records, tokens in shard_records(engine, jobs, set(shard.done), cfg.seed, cfg.strip_echo):
            shard.append(records)
            report("batch", len(records), tokens)
    shard.finish()
    report("shard", index, len(jobs))
    return len(jobs)


def _worker_main(cfg: GenerateConfig, model_dir: str, rt: Runtime, jobs: dict[int, list[Job]], out: str,
                 worker: int, n_gpus: int, queue: Any) -> None:
    """Entry of a spawned worker process: its shards in order; every event goes to the parent through the queue."""
    try:
        tp = cfg.vllm.tensor_parallel_size if cfg.backend == "vllm" else 1
        if cfg.backend == "vllm" and n_gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str((worker * tp + k) % n_gpus) for k in range(tp))
        threads = max(1, (os.cpu_count() or 1) // cfg.workers) if rt.device == "cpu" else None
        engine = load_engine(cfg, model_dir, rt, gpu=worker % max(n_gpus, 1), threads=threads)
        for index in sorted(jobs):
            process_shard(engine, index, jobs[index], Path(out), cfg, lambda *e: queue.put(e))
        queue.put(("exit", worker, 0))
    except BaseException:  # noqa: BLE001 - report any failure (even KeyboardInterrupt) to the parent, then die
        queue.put(("error", worker, traceback.format_exc()))
        raise


class Progress:
    """tqdm bar over records with tokens/s in the postfix (ETA from tqdm's rate); also keeps the totals."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="rec", desc="generate", disable=not enabled, dynamic_ncols=True)
        self.records = self.tokens = 0
        self.t0 = time.perf_counter()

    def batch(self, records: int, tokens: int) -> None:
        self.records += records
        self.tokens += tokens
        self.bar.update(records)
        self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.t0, 1e-9):.1f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def run_shards(cfg: GenerateConfig, model_dir: str, rt: Runtime, jobs: dict[int, list[Job]], out: Path,
               state: dict[str, Any]) -> dict[str, int]:
    """Generate the given shards with cfg.workers processes (round-robin over shard indices) or in-process when 1.
    `state["shards"]` gets {index: records} as shards finish (persisted at once). Returns record/token totals."""
    progress = Progress(sum(map(len, jobs.values())), cfg.progress)

    def report(event: str, a: int, b: int) -> None:
        if event == "batch":
            progress.batch(a, b)
        else:
            state["shards"][str(a)] = b
            write_state(out, state)

    n_gpus = torch.cuda.device_count() if rt.device == "cuda" else 0
    try:
        if not jobs:
            return {"records": 0, "tokens": 0}
        if all(j.fixed for js in jobs.values() for j in js):  # templated targets only: no LLM to load
            for index in sorted(jobs):
                process_shard(None, index, jobs[index], out, cfg, report)
        elif cfg.workers == 1:
            engine = load_engine(cfg, model_dir, rt)
            for index in sorted(jobs):
                process_shard(engine, index, jobs[index], out, cfg, report)
        else:
            _run_workers(cfg, model_dir, rt, jobs, out, n_gpus, report)
    finally:
        progress.close()
    return {"records": progress.records, "tokens": progress.tokens}


def _run_workers(cfg: GenerateConfig, model_dir: str, rt: Runtime, jobs: dict[int, list[Job]], out: Path,
                 n_gpus: int, report: Report) -> None:
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # never fork a process that holds torch threads / CUDA state
    q = ctx.Queue()
    order = sorted(jobs)
    procs = []
    for w in range(min(cfg.workers, len(order))):
        mine = {i: jobs[i] for i in order[w::cfg.workers]}
        p = ctx.Process(target=_worker_main, args=(cfg, model_dir, rt, mine, str(out), w, n_gpus, q), daemon=True)
        p.start()
        procs.append(p)
    running = set(range(len(procs)))
    try:
        while running:
            try:
                event, a, b = q.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [w for w in running if not procs[w].is_alive() and procs[w].exitcode != 0]
                if dead:
                    raise RuntimeError(f"generate worker {dead[0]} died (exit code {procs[dead[0]].exitcode}); "
                                       f"re-run `desta generate` to resume") from None
                continue
            if event == "error":
                raise RuntimeError(f"generate worker {a} failed; re-run `desta generate` to resume:\n{b}")
            if event == "exit":
                running.discard(a)
            else:
                report(event, a, b)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
