"""Stage `prepare`: ingest the sources in params.yaml into Parquet manifest shards. Run: `desta prepare` (or
`dvc repro prepare`).

Writes into paths.manifests: manifest-00000.parquet ... (desta.data.manifest schema), summary.json (counts per
source / domain / split, hours, quarantine counts) and quarantine.jsonl (one line per rejected file with its reason).
Idempotent and deterministic: the same inputs and params give the same shards. Every source is checked before any
work; files are decoded and checked by worker processes in bounded batches (memory flat in the corpus size).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from desta.config import Params, PrepareConfig, QualityConfig, SourceConfig
from desta.data import demo
from desta.data.audio import AudioError
from desta.data.corpora import Entry, Recipe, RecipeError, recipe_for
from desta.data.manifest import Clip, write_shard
from desta.data.quality import Checked, check_audio
from desta.data.remote import LocalTree, S3Tree, open_tree, read_uri

BATCH = 2048  # entries in flight at once (bounds memory at any corpus size)


class PrepareError(RuntimeError):
    """A source is missing or malformed; raised before any audio is read."""


def stable_split(key: str, salt: str, valid_fraction: float, test_fraction: float) -> str:
    """train / valid / test from a salted sha1 of `key` (stable across runs, machines and corpus growth)."""
    u = int.from_bytes(hashlib.sha1(f"{salt}:{key}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"


def relative_audio(uri: str, root: Path) -> str:
    """Local paths under the project root are written relative to it (portable manifests); others as given."""
    if uri.startswith("s3://"):
        return uri
    path = Path(uri).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def open_source(source: SourceConfig, params: Params) -> tuple[SourceConfig, Recipe, LocalTree | S3Tree]:
    """Resolve and check one source before any work; a missing directory fails with what was expected."""
    try:
        recipe = recipe_for(source.kind)
    except RecipeError as err:
        raise PrepareError(f"params.yaml prepare.sources[{source.name}]: {err}") from None
    path = source.path or str(Path(params.paths.raw) / source.name)
    tree = open_tree(path)
    if source.kind != "demo" and isinstance(tree, LocalTree) and not Path(path).is_dir():
        raise PrepareError(f"source '{source.name}' (kind {source.kind}): directory {path} does not exist; expected "
                           f"the {source.kind} corpus root (see docs/data.md); download it or fix prepare.sources "
                           "path in params.yaml")
    try:
        recipe.check(source, tree)
    except RecipeError as err:
        raise PrepareError(f"source '{source.name}' (kind {source.kind}): {err}") from None
    return source, recipe, tree


def _check_worker(task: tuple[str, str, dict[str, Any], int]) -> tuple[str, Checked | tuple[str, str]]:
    uri, name, quality, target_sr = task
    try:
        data = read_uri(uri)
    except FileNotFoundError:
        return uri, ("missing", "the metadata lists this file but it is not there; download it or drop the row")
    except OSError as err:
        return uri, ("unreadable", f"cannot read the file ({err})")
    except Exception as err:  # botocore ClientError and friends
        if "NoSuchKey" in str(err) or "404" in str(err):
            return uri, ("missing", "the metadata lists this object but it is not in the bucket; upload it")
        return uri, ("unreadable", f"cannot fetch the object ({type(err).__name__}: {err})")
    try:
        checked, _wave = check_audio(data, name, QualityConfig(**quality), target_sr)
    except AudioError as err:
        return uri, (err.reason, err.detail)
    return uri, checked


def _batches(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


def _entries(sources: list[tuple[SourceConfig, Recipe, Any]], raw: Path) -> Iterator[tuple[SourceConfig, Recipe,
                                                                                           Any, Entry]]:
    for source, recipe, tree in sources:
        entries = recipe.entries(source, tree, raw)
        if source.kind != "demo" and source.n_clips:
            entries = islice(entries, source.n_clips)
        for entry in entries:
            yield source, recipe, tree, entry


class _Writer:
    """Buffers clips into shards of `shard_size` rows; removes stale shards from an earlier, larger run."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir, self.shard_size, self.buffer, self.shards = out_dir, shard_size, [], 0

    def add(self, clip: Clip) -> None:
        self.buffer.append(clip)
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            write_shard(self.buffer, self.out_dir / f"manifest-{self.shards:05d}.parquet")
            self.shards, self.buffer = self.shards + 1, []

    def close(self) -> None:
        self.flush()
        for stale in self.out_dir.glob("manifest-*.parquet"):
            if int(stale.stem.split("-")[1]) >= self.shards:
                stale.unlink()


class _Tally:
    def __init__(self) -> None:
        self.clips: Counter = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.quarantine: Counter = Counter()

    def add(self, clip: Clip) -> None:
        for key in ("total", f"source/{clip.source}", f"domain/{clip.domain}", f"split/{clip.split}"):
            self.clips[key] += 1
            self.seconds[key] += clip.duration

    def summary(self, shards: int) -> dict[str, Any]:
        def group(prefix: str) -> dict[str, Any]:
            return {k.split("/", 1)[1]: {"clips": v, "hours": round(self.seconds[k] / 3600, 4)}
                    for k, v in sorted(self.clips.items()) if k.startswith(prefix + "/")}

        return {"clips": self.clips["total"], "hours": round(self.seconds["total"] / 3600, 4), "shards": shards,
                "by_source": group("source"), "by_domain": group("domain"), "by_split": group("split"),
                "quarantined": {"total": sum(self.quarantine.values()), "by_reason": dict(sorted(
                    (k.split("/", 1)[1], v) for k, v in self.quarantine.items() if k.startswith("reason/"))),
                    "by_source": dict(sorted((k.split("/", 1)[1], v) for k, v in self.quarantine.items()
                                             if k.startswith("source/")))}}


def _make_clip(source: SourceConfig, recipe: Recipe, entry: Entry, checked: Checked, audio: str,
               cfg: PrepareConfig) -> Clip:
    meta = dict(entry.meta)
    clip_id = f"{source.name}/{Path(entry.rel).with_suffix('').as_posix()}"
    split = meta.pop("split", None) or stable_split(f"{source.name}/{entry.group or entry.rel}", cfg.split_seed,
                                                    cfg.valid_fraction, cfg.test_fraction)
    license_ = source.license or meta.pop("license", None) or recipe.license
    meta.pop("license", None)
    return Clip(id=clip_id, audio=audio, duration=round(checked.duration, 4), sample_rate=checked.sample_rate,
                channels=checked.channels, source=source.name, domain=meta.pop("domain", None), split=split,
                license=license_, content_hash=checked.content_hash, **meta)


class _Ingest:
    """One pass over all entries: check in workers, reject (quarantine) or accept (dedupe, split, write)."""

    def __init__(self, cfg: PrepareConfig, out_dir: Path, root: Path, qf: Any, pool: Any, bar: tqdm):
        self.cfg, self.root, self.qf, self.pool, self.bar = cfg, root, qf, pool, bar
        self.writer, self.tally, self.seen = _Writer(out_dir, cfg.shard_size), _Tally(), {}
        self.quality = cfg.quality.model_dump()

    def reject(self, source: SourceConfig, entry: Entry, uri: str, reason: str, detail: str) -> None:
        self.tally.quarantine[f"reason/{reason}"] += 1
        self.tally.quarantine[f"source/{source.name}"] += 1
        self.qf.write(json.dumps({"source": source.name, "audio": relative_audio(uri, self.root), "reason": reason,
                                  "detail": detail, "where": entry.where}, ensure_ascii=False) + "\n")

    def accept(self, source: SourceConfig, recipe: Recipe, entry: Entry, uri: str, checked: Checked) -> None:
        if checked.content_hash in self.seen:
            self.reject(source, entry, uri, "duplicate", f"same bytes as {self.seen[checked.content_hash]}")
            return
        try:
            clip = _make_clip(source, recipe, entry, checked, relative_audio(uri, self.root), self.cfg)
        except (TypeError, ValueError) as err:
            self.reject(source, entry, uri, "bad_metadata", f"{entry.where}: {err}")
            return
        self.seen[checked.content_hash] = clip.id
        self.writer.add(clip)
        self.tally.add(clip)

    def batch(self, batch: list[tuple[SourceConfig, Recipe, Any, Entry]]) -> None:
        kept = []
        for source, recipe, tree, entry in batch:
            if "bad" in entry.extra:
                self.reject(source, entry, tree.uri(entry.rel), "bad_metadata", entry.extra["bad"])
                self.bar.update()
            else:
                kept.append((source, recipe, tree, entry))
        tasks = [(t.uri(e.rel), f"{s.name}/{e.rel}", self.quality, self.cfg.target_sample_rate) for s, _, t, e in kept]
        results = self.pool.imap(_check_worker, tasks, chunksize=16) if self.pool else map(_check_worker, tasks)
        for (source, recipe, _tree, entry), (uri, result) in zip(kept, results, strict=True):
            self.bar.update()
            if isinstance(result, tuple):
                self.reject(source, entry, uri, *result)
            else:
                self.accept(source, recipe, entry, uri, result)


def _check_pool(cfg: PrepareConfig) -> Any:
    """Where the audio is checked: the Ray cluster at prepare.ray_address (desta/data/ray_ingest.py), `workers`
    local processes, or this process (None)."""
    if cfg.ray_address:
        from desta.data.ray_ingest import RayCheckPool

        return RayCheckPool(cfg.ray_address)
    return mp.get_context("spawn").Pool(cfg.workers) if cfg.workers > 1 else None


def ingest(sources: list[tuple[SourceConfig, Recipe, Any]], cfg: PrepareConfig, raw: Path, out_dir: Path,
           root: Path, progress: bool = True) -> dict[str, Any]:
    """Decode + check every entry (worker processes), drop duplicates by content hash, split, write shards and the
    quarantine report. Returns the summary (also written to out_dir/summary.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    q_tmp = out_dir / "quarantine.jsonl.tmp"
    pool = _check_pool(cfg)
    try:
        with open(q_tmp, "w", encoding="utf-8") as qf, tqdm(desc="prepare", unit="clip", disable=not progress) as bar:
            run = _Ingest(cfg, out_dir, root, qf, pool, bar)
            for batch in _batches(_entries(sources, raw), BATCH):
                run.batch(batch)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    run.writer.close()
    q_tmp.replace(out_dir / "quarantine.jsonl")
    summary = run.tally.summary(run.writer.shards)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"prepare: {summary['clips']} clips, {summary['hours']:.3f} h in {summary['shards']} shard(s); "
             f"quarantined {summary['quarantined']['total']}"]
    for section in ("by_source", "by_domain", "by_split"):
        parts = ", ".join(f"{k} {v['clips']} ({v['hours'] * 60:.1f} min)" for k, v in summary[section].items())
        lines.append(f"  {section.replace('by_', ''):<7} {parts}")
    if summary["quarantined"]["total"]:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["quarantined"]["by_reason"].items())
        lines.append(f"  quarantine: {reasons} (see quarantine.jsonl)")
    return "\n".join(lines)


def run_prepare(params: Params, progress: bool = True) -> dict[str, Any]:
    """Stage entry: check every source, build the demo corpus if needed, ingest, log to MLflow, print a summary."""
    from desta.tracking import stage_run

    cfg = params.prepare
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise PrepareError(f"params.yaml prepare.sources: source names must be unique, got {names}")
    sources = [open_source(s, params) for s in cfg.sources]  # fails before any work
    raw, out_dir = Path(params.paths.raw), Path(params.paths.manifests)
    with stage_run(params, "prepare", cfg) as tracker:
        for source in cfg.sources:
            if source.kind == "demo":
                demo.build(raw / source.name, n_clips=source.n_clips or 300, seed=source.seed,
                           valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction,
                           workers=cfg.workers, progress=progress)
        summary = ingest(sources, cfg, raw, out_dir, Path.cwd(), progress=progress)
        metrics = {"clips": summary["clips"], "hours": summary["hours"],
                   "quarantined": summary["quarantined"]["total"]}
        metrics.update({f"clips_{k}": v["clips"] for k, v in summary["by_split"].items()})
        tracker.log_metrics(metrics)
        tracker.log_dict(summary, "prepare/summary.json")
        tracker.log_artifact(out_dir / "quarantine.jsonl", "prepare")
    print(format_summary(summary))
    return summary
