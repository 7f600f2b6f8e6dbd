"""Stage `prepare`: ingest the sources in params.yaml into Parquet manifest shards. Run: `desta prepare` (or
`dvc repro prepare`).

Writes into paths.manifests: manifest-00000.parquet ... (desta.data.manifest schema), summary.json (counts per
source / domain / split, hours, quarantine counts) and quarantine.jsonl (one line per rejected file with its reason).
Idempotent and deterministic: the same inputs and params give the same bytes. Every source is checked before any
work; files are decoded and checked by worker processes in bounded batches (memory flat in the corpus size).
Everything is written into `<manifests>.partial/` and swapped in whole at the end, so a crash, a kill, a full disk
or an S3 outage leaves the previous manifests untouched (never a mix of old and new shards). A clip is quarantined
only for what is wrong with it; an endpoint that stays away (params `io:`) fails the stage instead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import shutil
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
from desta.data.remote import LocalTree, S3Tree, UnsafePath, open_tree, read_uri
from desta.io_retry import EndpointError, RetryPolicy

BATCH = 2048  # entries in flight at once (bounds memory at any corpus size)
ENDPOINT = "__endpoint__"  # a worker's result when the source's server stayed away (not a clip problem)
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


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
    tree = open_tree(path, RetryPolicy.from_config(params.io))
    if source.kind != "demo" and isinstance(tree, LocalTree) and not Path(path).is_dir():
        raise PrepareError(f"source '{source.name}' (kind {source.kind}): directory {path} does not exist; expected "
                           f"the {source.kind} corpus root (see docs/data.md); download it or fix prepare.sources "
                           "path in params.yaml")
    try:
        recipe.check(source, tree)
    except (RecipeError, EndpointError) as err:
        raise PrepareError(f"source '{source.name}' (kind {source.kind}): {err}") from None
    return source, recipe, tree


def _check_worker(task: tuple[str, str, dict[str, Any], int, RetryPolicy]) -> tuple[str, Checked | tuple[str, str]]:
    uri, name, quality, target_sr, policy = task
    try:
        data = read_uri(uri, policy)
    except FileNotFoundError:
        return uri, ("missing", "the metadata lists this file but it is not there; download it or drop the row")
    except UnsafePath as err:
        return uri, ("bad_path", str(err))
    except EndpointError as err:  # the server, not the clip: the stage stops, nothing is quarantined
        return uri, (ENDPOINT, str(err))
    except OSError as err:
        return uri, ("unreadable", f"cannot read the file ({err.strerror or err})")
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
    """Buffers clips into shards of `shard_size` rows in a fresh directory."""

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

        def counts(prefix: str) -> dict[str, int]:
            return dict(sorted((k.split("/", 1)[1], v) for k, v in self.quarantine.items() if k.startswith(prefix)))

        by_reason = counts("reason/")  # each rejected file is counted once per reason and once per source
        return {"clips": self.clips["total"], "hours": round(self.seconds["total"] / 3600, 4), "shards": shards,
                "by_source": group("source"), "by_domain": group("domain"), "by_split": group("split"),
                "quarantined": {"total": sum(by_reason.values()), "by_reason": by_reason,
                                "by_source": counts("source/")}}


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

    def __init__(self, cfg: PrepareConfig, out_dir: Path, root: Path, qf: Any, pool: Any, bar: tqdm,
                 policy: RetryPolicy):
        self.cfg, self.root, self.qf, self.pool, self.bar = cfg, root, qf, pool, bar
        self.writer, self.tally, self.seen, self.ids = _Writer(out_dir, cfg.shard_size), _Tally(), {}, {}
        self.quality, self.policy = cfg.quality.model_dump(), policy

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
        if clip.id in self.ids:  # x.wav beside x.WAV or x.flac: one id, two clips
            self.reject(source, entry, uri, "duplicate_id", f"clip id {clip.id} is already taken by "
                        f"{self.ids[clip.id]}; rename one of the files")
            return
        self.seen[checked.content_hash], self.ids[clip.id] = clip.id, clip.audio
        self.writer.add(clip)
        self.tally.add(clip)

    def batch(self, batch: list[tuple[SourceConfig, Recipe, Any, Entry]]) -> None:
        kept = []
        for source, recipe, tree, entry in batch:
            problem = ("bad_metadata", entry.extra["bad"]) if "bad" in entry.extra else _unsafe(tree, entry)
            if problem:
                self.reject(source, entry, tree.uri(entry.rel), *problem)
                self.bar.update()
            else:
                kept.append((source, recipe, tree, entry))
        tasks = [(t.uri(e.rel), f"{s.name}/{e.rel}", self.quality, self.cfg.target_sample_rate, self.policy)
                 for s, _, t, e in kept]
        results = self.pool.imap(_check_worker, tasks, chunksize=16) if self.pool else map(_check_worker, tasks)
        for (source, recipe, _tree, entry), (uri, result) in zip(kept, results, strict=True):
            self.bar.update()
            if isinstance(result, tuple) and result[0] == ENDPOINT:
                raise EndpointError(f"source '{source.name}': {result[1]}")
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


def _unsafe(tree: Any, entry: Entry) -> tuple[str, str] | None:
    """("bad_path", why) for a metadata path that leaves the source root (absolute, `..`, a symlink out)."""
    try:
        tree.check_rel(entry.rel)
    except UnsafePath as err:
        return "bad_path", f"{entry.where}: {err}"
    return None


def ingest(sources: list[tuple[SourceConfig, Recipe, Any]], cfg: PrepareConfig, raw: Path, out_dir: Path,
           root: Path, policy: RetryPolicy, progress: bool = True) -> dict[str, Any]:
    """Decode + check every entry (worker processes), drop duplicates by content hash and id, split, write shards and
    the quarantine report into `<out_dir>.partial`, then swap it in for out_dir. Returns the summary (also written
    to out_dir/summary.json). On any error out_dir is left as it was and the partial directory is removed."""
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pool = _check_pool(cfg)
    try:
        with open(staging / "quarantine.jsonl", "w", encoding="utf-8") as qf, \
                tqdm(desc="prepare", unit="clip", disable=not progress) as bar:
            run = _Ingest(cfg, staging, root, qf, pool, bar, policy)
            for batch in _batches(_entries(sources, raw), BATCH):
                run.batch(batch)
            run.writer.flush()
        summary = run.tally.summary(run.writer.shards)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _swap(staging, out_dir)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise PrepareError(f"{err.filename or out_dir}: no space left while writing the manifests "
                               f"({err.strerror}); free space or point paths.manifests at a larger disk. "
                               f"{out_dir} was left as it was") from None
        if isinstance(err, EndpointError):
            raise PrepareError(f"{err}. Nothing was quarantined for it; {out_dir} was left as it was") from None
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return summary


def _swap(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by staging (a crash between the two renames leaves `.old` and `.partial`, both discarded
    by the next run, which rebuilds from the sources)."""
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


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
    sources = [open_source(s, params) for s in cfg.sources]  # fails before any work
    raw, out_dir = Path(params.paths.raw), Path(params.paths.manifests)
    with stage_run(params, "prepare", cfg) as tracker:
        for source in cfg.sources:
            if source.kind == "demo":
                demo.build(raw / source.name, n_clips=source.n_clips or 300, seed=source.seed,
                           valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction,
                           workers=cfg.workers, progress=progress)
        summary = ingest(sources, cfg, raw, out_dir, Path.cwd(), RetryPolicy.from_config(params.io), progress)
        metrics = {"clips": summary["clips"], "hours": summary["hours"],
                   "quarantined": summary["quarantined"]["total"]}
        metrics.update({f"clips_{k}": v["clips"] for k, v in summary["by_split"].items()})
        tracker.log_metrics(metrics)
        tracker.log_dict(summary, "prepare/summary.json")
        tracker.log_artifact(out_dir / "quarantine.jsonl", "prepare")
    print(format_summary(summary))
    return summary
