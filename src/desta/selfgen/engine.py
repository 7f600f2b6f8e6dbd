"""Batched text generation for the data engine: length-bucketed, left-padded batches with a KV cache (HF backend),
or vLLM when it is installed and `generate.backend: vllm`; plus the shard runner (resume, workers, progress).

Used by `desta generate` (run_shards) and benchmarks/selfgen_throughput.py (HFEngine).
Shapes: input_ids / attention_mask [b, t] with left padding (b = batch, t = longest prompt in the bucket); position
ids come from the mask (generate() derives them), so a padded row sees the same positions as the unpadded prompt.
Outputs are cut at the first end-of-turn token.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from desta.config import GenerateConfig
from desta.describe import strip_description_echo
from desta.records import PARTIAL_SUFFIX, rejected_path, shard_path, write_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoding:
    """How to decode: greedy (do_sample False) or nucleus sampling; max_new_tokens caps each response."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9


@dataclass(frozen=True)
class Output:
    index: int  # position in the request list
    text: str
    new_tokens: int  # generated tokens up to and including the end-of-turn token


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by (length, index) and cut into batches: similar lengths share a batch, padding stays small.

    Deterministic in the lengths alone, so the same shard always gives the same batches (same outputs).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class HFEngine:
    """A causal LM + tokenizer with a chat template. `generate(messages_list, seed)` yields Outputs batch by batch."""

    def __init__(self, model: Any, tokenizer: Any, decoding: Decoding, batch_size: int):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"tokenizer of {getattr(model, 'name_or_path', 'the generator')} has no chat template; "
                             f"the generator must be an instruction-tuned LLM")
        self.model = model.eval()
        self.tok = tokenizer
        self.decoding = decoding
        self.batch_size = batch_size
        self.eos_ids = self._eos_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in ids:
            ids.append(self.tok.eos_token_id)
        if not ids:
            raise ValueError("generator has no eos token (generation_config.eos_token_id and tokenizer.eos_token)")
        return ids

    def encode(self, messages: list[dict[str, Any]]) -> list[int]:
        """Chat template with the assistant turn opened -> token ids."""
        out = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, t - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, t - len(r):] = 1
        return ids, mask  # [b, t], [b, t]

    def _cut(self, new: list[int]) -> tuple[list[int], int]:
        for j, tok_id in enumerate(new):
            if tok_id in self.eos_ids:
                return new[:j], j + 1
        return new, len(new)

    @torch.inference_mode()
    def generate_ids(self, rows: list[list[int]], seed: int) -> list[tuple[str, int]]:
        """One padded batch -> [(text, new_tokens)] in row order. The seed matters only when sampling."""
        ids, mask = self._pad_left(rows)
        device = next(self.model.parameters()).device
        torch.manual_seed(seed)
        d = self.decoding
        kw = {"temperature": d.temperature, "top_p": d.top_p, "top_k": None} if d.do_sample else {}
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  max_new_tokens=d.max_new_tokens, do_sample=d.do_sample, use_cache=True,
                                  eos_token_id=self.eos_ids, pad_token_id=self.pad_id, **kw)
        results = []
        for row in out[:, ids.shape[1]:].tolist():  # [b, new]
            kept, n = self._cut(row)
            results.append((self.tok.decode(kept, skip_special_tokens=True).strip(), n))
        return results

    def generate(self, messages_list: Sequence[list[dict[str, Any]]], seed: int) -> Iterator[list[Output]]:
        """Length-bucketed batches over the requests; yields each finished batch (callers persist it at once).

        Batch j is decoded with seed `seed * 100003 + j`, so a sampled run is reproducible batch by batch.
        """
        encoded = [self.encode(m) for m in messages_list]
        for j, batch in enumerate(length_buckets([len(e) for e in encoded], self.batch_size)):
            texts = self.generate_ids([encoded[i] for i in batch], seed * 100003 + j)
            yield [Output(i, text, n) for i, (text, n) in zip(batch, texts, strict=True)]


class VLLMEngine:
    """The same interface on vLLM (GPU). Whole request lists go to vLLM, which batches and caches on its own."""

    def __init__(self, model_dir: str, decoding: Decoding, batch_size: int, dtype: str = "auto"):
        try:
            from vllm import LLM
        except ImportError:
            raise RuntimeError("generate.backend is 'vllm' but vllm is not installed; `pip install vllm` on a CUDA "
                               "machine or set generate.backend: hf") from None
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.llm = LLM(model=model_dir, dtype=dtype, max_num_seqs=batch_size, seed=0)
        self.decoding = decoding
        self.batch_size = batch_size

    def generate(self, messages_list: Sequence[list[dict[str, Any]]], seed: int) -> Iterator[list[Output]]:
        from vllm import SamplingParams

        d = self.decoding
        sp = SamplingParams(max_tokens=d.max_new_tokens, seed=seed, temperature=d.temperature if d.do_sample else 0.0,
                            top_p=d.top_p if d.do_sample else 1.0)
        for start in range(0, len(messages_list), self.batch_size * 4):  # chunks bound the loss on a kill
            chunk = messages_list[start:start + self.batch_size * 4]
            prompts = [self.tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chunk]
            outs = self.llm.generate(prompts, sp, use_tqdm=False)
            yield [Output(start + i, o.outputs[0].text.strip(), len(o.outputs[0].token_ids))
                   for i, o in enumerate(outs)]


# ------------------------------------------------------------------------------------------------- the shard runner
@dataclass(frozen=True)
class Job:
    """One request: record id, the generator's chat messages, and the finished record minus its response; `fixed`
    jobs (templated targets) already carry their response and never reach the engine."""

    id: str
    messages: list[dict[str, Any]]
    record: dict[str, Any]
    fixed: bool = False


Report = Callable[[str, int, int], None]  # (event "batch"|"shard", a, b): batch -> (records, tokens); shard -> (i, n)


def load_engine(cfg: GenerateConfig, model_dir: str, worker: int, n_gpus: int) -> HFEngine | VLLMEngine:
    """The worker's engine. GPUs: worker i takes cuda:(i % n_gpus); CPU: the cores are shared out evenly."""
    decoding = Decoding(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p)
    if cfg.backend == "vllm":
        if n_gpus and cfg.workers > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(worker % n_gpus)
        return VLLMEngine(model_dir, decoding, cfg.batch_size, dtype=cfg.dtype)
    from desta.models.store import load_llm

    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and n_gpus > 0)
    if use_cuda and n_gpus == 0:
        raise RuntimeError("params.yaml generate.device is 'cuda' but no CUDA device is visible; use auto or cpu")
    device = torch.device(f"cuda:{worker % n_gpus}") if use_cuda else torch.device("cpu")
    if not use_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    model, tok = load_llm(model_dir, dtype=getattr(torch, cfg.dtype))
    return HFEngine(model.to(device), tok, decoding, cfg.batch_size)


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


def process_shard(engine: HFEngine | VLLMEngine | None, index: int, jobs: list[Job], out: Path, seed: int,
                  report: Report, strip_echo: bool = False) -> int:
    """Generate one shard: append each finished batch to the .partial file (flushed + fsynced), then write the
    shard in plan order (tmp + rename) and drop the .partial. `strip_echo` removes recited seed-description
    pieces from responses (describe.strip_description_echo). Returns the record count."""
    partial = partial_path(out, index)
    done = resume_partial(partial, {j.id for j in jobs})
    done |= {j.id: j.record for j in jobs if j.fixed}
    todo = [j for j in jobs if j.id not in done]
    if todo and engine is None:
        raise RuntimeError(f"shard {index}: {len(todo)} record(s) need the generator but no engine was loaded")
    with partial.open("a", encoding="utf-8") as fh:
        for batch in engine.generate([j.messages for j in todo], seed * 1_000_003 + index) if todo else ():
            lines = []
            for o in batch:
                rec = dict(todo[o.index].record)
                rec["response"] = strip_description_echo(o.text) if strip_echo else o.text
                done[rec["id"]] = rec
                lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
            report("batch", len(batch), sum(o.new_tokens for o in batch))
    write_final_shard(out, index, [done[j.id] for j in jobs])
    partial.unlink()
    report("shard", index, len(jobs))
    return len(jobs)


def _worker_main(cfg: GenerateConfig, model_dir: str, jobs: dict[int, list[Job]], out: str, worker: int,
                 n_gpus: int, queue: Any) -> None:
    """Entry of a spawned worker process: its shards in order; every event goes to the parent through the queue."""
    try:
        engine = load_engine(cfg, model_dir, worker, n_gpus)
        for index in sorted(jobs):
            process_shard(engine, index, jobs[index], Path(out), cfg.seed, lambda *e: queue.put(e), cfg.strip_echo)
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


def run_shards(cfg: GenerateConfig, model_dir: str, jobs: dict[int, list[Job]], out: Path,
               state: dict[str, Any]) -> dict[str, int]:
    """Generate the given shards with cfg.workers processes (round-robin over shard indices) or in-process when 1.
    `state["shards"]` gets {index: records} as shards finish (the caller persists it). Returns record/token totals."""
    progress = Progress(sum(map(len, jobs.values())), cfg.progress)

    def report(event: str, a: int, b: int) -> None:
        if event == "batch":
            progress.batch(a, b)
        else:
            state["shards"][str(a)] = b
            write_state(out, state)

    n_gpus = torch.cuda.device_count() if cfg.device != "cpu" else 0
    try:
        if not jobs:
            return {"records": 0, "tokens": 0}
        if all(j.fixed for js in jobs.values() for j in js):  # templated targets only: no LLM to load
            for index in sorted(jobs):
                process_shard(None, index, jobs[index], out, cfg.seed, report)
        elif cfg.workers == 1:
            engine = load_engine(cfg, model_dir, 0, n_gpus)
            for index in sorted(jobs):
                process_shard(engine, index, jobs[index], out, cfg.seed, report, cfg.strip_echo)
        else:
            _run_workers(cfg, model_dir, jobs, out, n_gpus, report)
    finally:
        progress.close()
    return {"records": progress.records, "tokens": progress.tokens}


def _run_workers(cfg: GenerateConfig, model_dir: str, jobs: dict[int, list[Job]], out: Path, n_gpus: int,
                 report: Report) -> None:
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # never fork a process that holds torch threads / CUDA state
    q = ctx.Queue()
    order = sorted(jobs)
    procs = []
    for w in range(min(cfg.workers, len(order))):
        mine = {i: jobs[i] for i in order[w::cfg.workers]}
        p = ctx.Process(target=_worker_main, args=(cfg, model_dir, mine, str(out), w, n_gpus, q), daemon=True)
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
