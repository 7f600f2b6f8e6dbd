"""`desta generate` (DVC stage `generate`): the backbone LLM writes the training targets from seed descriptions.

For every clip of `generate.splits`: seed description (describe.py) + `prompts_per_clip` prompts (prompts.py) ->
the generator answers each with its chat template -> one record per (clip, prompt) (records.py). Output:
`<paths.generated>/shard-NNNNN.jsonl` plus `generate.json` (fingerprint, per-shard counts). Resumable: finished
shards are skipped; an interrupted shard keeps its flushed batches in `shard-NNNNN.jsonl.partial` and resumes after
them (a SIGKILL loses at most the in-flight batch, never duplicates). Shards are a fixed function of the plan and
sampling is seeded per record, so any worker count, host count or resume gives the same shards. Engines run in
local processes (desta/selfgen/shards.py) or, with generate.ray_address, on a Ray cluster
(desta/selfgen/ray_run.py). See docs/selfgen.md and docs/pipeline.md (Scaling out).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desta.config import Params
from desta.conversation import generator_messages
from desta.data.manifest import Clip, iter_clips
from desta.describe import seed_description
from desta.records import (
    PARTIAL_SUFFIX,
    REJECTED_GLOB,
    STATE_FILE,
    build_record,
    count_rejected,
    shard_path,
    write_state,
)
from desta.selfgen import templated
from desta.selfgen.prompts import Prompt, check_category_weights, load_pool, sample_prompts
from desta.selfgen.shards import Job, Runtime, resolve_runtime, run_shards, visible_gpus
from desta.selfgen.templated import TemplatedPrompt

log = logging.getLogger(__name__)

RECORD_FORMAT = 2  # bump when build_record changes: existing shards become stale (2: target_source)
WALL_CLOCK_KEYS = ("seconds", "tokens_per_s")  # summary keys that vary from run to run
RUN_ONLY_KEYS = (*WALL_CLOCK_KEYS, "workers")  # not written to generate.json: where and how fast it ran
LLM_SOURCE = "llm"  # a record's `target_source` when generate.generator (the backbone, by default) wrote it


@dataclass(frozen=True)
class Item:
    """One (clip, prompt) record to write; k is its index for this clip (record id `<clip_id>#<k>`: k = 0, 1, ...
    for the LLM's targets, "t0", "t1", ... for templated ones). `answer` is set when no LLM writes the target."""

    clip: Clip
    k: int | str
    prompt: Prompt | TemplatedPrompt
    seed_description: str
    answer: str | None = None

    @property
    def id(self) -> str:
        return f"{self.clip.id}#{self.k}"

    @property
    def target_source(self) -> str:
        return LLM_SOURCE if self.answer is None else templated.SOURCE


class GeneratorMismatch(RuntimeError):
    """generate.generator is not the model's backbone and the ablation switch is off."""


def resolve_generator(params: Params) -> tuple[str, Path, str]:
    """(reference, local dir, content hash) of the generator; refuses a non-backbone generator unless the paper's
    ablation (generate.allow_different_generator) is switched on."""
    from desta.models.store import model_hash, resolve

    g, backbone = params.generate, params.model.llm
    ref = g.generator or backbone
    path = resolve(ref, params.model_cache_dir())
    digest = model_hash(path)
    if ref != backbone and not g.allow_different_generator:
        backbone_hash = model_hash(resolve(backbone, params.model_cache_dir()))
        if backbone_hash != digest:
            raise GeneratorMismatch(
                f"params.yaml: generate.generator={ref!r} differs from the model's backbone model.llm={backbone!r}; "
                f"DeSTA self-generation uses the backbone. Set generate.generator: null, or set "
                f"generate.allow_different_generator: true to run the different-generator ablation")
    return ref, path, digest


def plan(params: Params) -> list[Item]:
    """All (clip, prompt) items in a stable order: clips by id, then prompt index. Independent of manifest sharding."""
    g = params.generate
    pool = load_pool()
    check_category_weights(pool, g.category_weights)
    clips = sorted(iter_clips(params.paths.manifests, splits=g.splits), key=lambda c: c.id)
    if g.max_clips:
        clips = clips[:g.max_clips]
    if not clips:
        raise ValueError(f"{params.paths.manifests}: no clips in splits {g.splits} (params.yaml generate.splits)")
    items = []
    for clip in clips:
        desc = seed_description(clip)
        if LLM_SOURCE in g.target_sources:
            items += [Item(clip, k, p, desc) for k, p in enumerate(sample_prompts(pool, clip, g.prompts_per_clip,
                                                                                      g.seed, g.category_weights))]
        if templated.SOURCE in g.target_sources:
            items += [Item(clip, f"t{k}", p, desc, answer) for k, (p, answer) in
                      enumerate(templated.targets(clip, g.prompts_per_clip, g.seed))]
    if not items:
        raise ValueError(f"{params.paths.manifests}: no clip of splits {g.splits} has a target from "
                         f"generate.target_sources={g.target_sources} (templated targets need labelled metadata)")
    return items


def shard_plan(items: list[Item], shard_size: int) -> list[list[Item]]:
    return [items[i:i + shard_size] for i in range(0, len(items), shard_size)]


def provenance(params: Params, ref: str, digest: str, dtype: str) -> dict[str, Any]:
    """The fields every record of the run carries: who generated it, how (`dtype` as resolved for the device the
    engines run on), and with which seed."""
    g = params.generate
    gen_params = {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample, "backend": g.backend,
                  "system_prompt": g.system_prompt, "prompt_pool": load_pool().version, "dtype": dtype,
                  "strip_echo": g.strip_echo}
    if g.do_sample:
        gen_params |= {"temperature": g.temperature, "top_p": g.top_p, "seeding": "per-record"}
    if g.backend == "vllm":
        gen_params |= {"tensor_parallel_size": g.vllm.tensor_parallel_size}
    return {"generator": ref, "generator_hash": digest, "gen_params": gen_params, "seed": g.seed}


def fingerprint(prov: dict[str, Any], shards: list[list[Item]]) -> str:
    """Hash of everything that decides the records: provenance, record format and the exact shard contents."""
    h = hashlib.sha256(json.dumps({"prov": prov, "format": RECORD_FORMAT}, sort_keys=True).encode())
    for shard in shards:
        for it in shard:
            h.update(f"{it.id}\t{it.prompt.id}\t{it.clip.split}\t{it.clip.audio}\t{it.seed_description}\t"
                     f"{it.answer}\n".encode())
        h.update(b"\x00")
    return h.hexdigest()


def messages_for(item: Item, system_prompt: str) -> list[dict[str, str]]:
    """The generator's chat (desta.conversation.generator_messages) for one item."""
    return generator_messages(item.seed_description, item.prompt.text, system_prompt)


def job_for(item: Item, prov: dict[str, Any], system_prompt: str) -> Job:
    """What a worker needs: the id, the generator's chat, and the record with its response still empty (a templated
    item's record is complete: its job is `fixed` and never reaches the LLM)."""
    if item.answer is not None:
        rec = build_record(item.clip, item.k, item.seed_description, item.prompt, item.answer,
                           templated.provenance(prov["seed"]))
        return Job(item.id, [], rec | {"target_source": item.target_source}, fixed=True)
    stub = build_record(item.clip, item.k, item.seed_description, item.prompt, "", prov)
    return Job(item.id, messages_for(item, system_prompt), stub | {"target_source": item.target_source})


def _prepare_out_dir(out: Path, fp: str, n_shards: int) -> dict[str, Any]:
    """Load the state file; when the fingerprint changed, delete the now-stale shards (ours only) and start over."""
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("fingerprint") != fp:
        stale = (sorted(out.glob("shard-*.jsonl")) + sorted(out.glob(f"shard-*.jsonl{PARTIAL_SUFFIX}"))
                 + sorted(out.glob(REJECTED_GLOB)))
        if stale:
            log.warning("%s: settings, generator or clips changed; removing %d stale shard file(s)", out, len(stale))
        for p in stale:
            p.unlink()
        state = {"fingerprint": fp, "n_shards": n_shards, "shards": {}}
        write_state(out, state)
    return state


def run_generate(params: Params) -> dict[str, Any]:
    """Stage entry: generate (or, with generate.import_aqa set, import) the training set. Returns a summary."""
    g = params.generate
    if g.import_aqa:
        from desta.selfgen.aqa_import import import_aqa

        return import_aqa(params, Path(g.import_aqa), data_root=None)
    ref, model_dir, digest = resolve_generator(params)
    if not g.ray_address:
        return _generate(params, ref, model_dir, digest, None)
    from desta.ray_cluster import ray_cluster

    with ray_cluster(g.ray_address, "generate.ray_address") as cluster:
        return _generate(params, ref, model_dir, digest, cluster)


def _generate(params: Params, ref: str, model_dir: Path, digest: str, cluster: Any) -> dict[str, Any]:
    """Plan, resume bookkeeping, the engines (local processes, or the Ray `cluster` when given), summary."""
    from desta.tracking import stage_run

    g = params.generate
    rt = resolve_runtime(g, int(cluster.gpus) if cluster else visible_gpus(g))
    prov = provenance(params, ref, digest, rt.dtype)
    shards = shard_plan(plan(params), g.shard_size)
    out = Path(params.paths.generated)
    state = _prepare_out_dir(out, fingerprint(prov, shards), len(shards))
    todo = [i for i in range(len(shards)) if not shard_path(out, i).is_file()]
    log.info("generate: %d records in %d shards (%d to do) with %s [%s] on %s (%s, %s)", sum(map(len, shards)),
             len(shards), len(todo), ref, digest[:19], f"Ray {cluster.address}" if cluster else "this machine",
             rt.device, rt.dtype)
    with stage_run(params, "generate", g) as tracker:
        t0 = time.perf_counter()
        stats = _run_engines(params, rt, cluster, ref, str(model_dir), digest,
                             {i: [job_for(it, prov, g.system_prompt) for it in shards[i]] for i in todo}, out, state)
        elapsed = time.perf_counter() - t0
        rejected = count_rejected(out)
        if rejected:
            log.warning("generate: %d record(s) had an empty response after strip_echo; kept aside in "
                        "%s/rejected-*.jsonl (not training targets)", rejected, out)
        summary = {"records": sum(map(len, shards)) - rejected, "rejected": rejected, "shards": len(shards),
                   "shards_generated": len(todo),
                   "generated_records": stats["records"], "new_tokens": stats["tokens"],
                   "seconds": round(elapsed, 1), "tokens_per_s": round(stats["tokens"] / elapsed, 1) if todo else 0.0,
                   "generator": ref, "generator_hash": digest, "out": str(out), "workers": g.workers}
        # generate.json is inside a DVC output: wall-clock figures and the worker count stay out of it (MLflow and
        # the log have them), so the file is the same whatever ran it
        state["summary"] = {k: v for k, v in summary.items() if k not in RUN_ONLY_KEYS}
        write_state(out, state)
        tracker.log_metrics({k: summary[k] for k in ("records", "rejected", "generated_records", "new_tokens",
                                                     "seconds", "tokens_per_s")})
        tracker.log_artifact(out / STATE_FILE)
    return summary


def _run_engines(params: Params, rt: Runtime, cluster: Any, ref: str, model_dir: str, digest: str,
                 jobs: dict[int, list[Job]], out: Path, state: dict[str, Any]) -> dict[str, int]:
    if cluster is None:
        return run_shards(params.generate, model_dir, rt, jobs, out, state)
    from desta.selfgen.ray_run import generate_on_ray

    return generate_on_ray(params.generate, ref, str(params.model_cache_dir()), digest, rt, jobs, out, state)
