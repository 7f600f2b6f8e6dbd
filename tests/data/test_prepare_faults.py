"""`desta prepare` under faults and hostile inputs: an S3 server stopped mid-stage (the test stops a real rclone
server), mistyped metadata rows, metadata paths that leave the corpus (`..`, absolute, symlinks, a FIFO, a device),
clip-id collisions, half an MP3, a kill -9 with a changed corpus and a full disk. Run: pytest tests/data/"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fixtures
import numpy as np
import pytest
import soundfile as sf
import yaml
from params_util import PARAMS_FILE, default_params

from desta.config import deep_merge
from desta.data import prepare
from desta.data.manifest import iter_clips
from desta.data.prepare import PrepareError, run_prepare

FAST_IO = {"retries": 2, "backoff_s": 0.05, "max_wait_s": 0.2, "timeout_s": 2.0, "judge_timeout_s": 2.0}


def _params(tmp_path, sources, io=None, **prepare_cfg):
    quality = {"max_duration_s": 3.0, **prepare_cfg.pop("quality", {})}
    return default_params({"paths": {"raw": str(tmp_path / "raw"), "manifests": str(tmp_path / "manifests")},
                           "tracking": {"enabled": False}, "io": {**FAST_IO, **(io or {})},
                           "prepare": {"sources": sources, "workers": 1, "quality": quality, **prepare_cfg}})


def _corpus(root: Path, n: int, extra_rows: list[dict] | None = None) -> Path:
    """n distinct 0.3 s tones (one named with "404" in its key) and a metadata.jsonl listing them."""
    rows = []
    for i in range(n):
        name = "clip-404.wav" if i == 3 else f"clip-{i:03d}.wav"
        fixtures.tone(root / name, seconds=0.3, freq=200 + 7 * i)
        rows.append({"file": name, "domain": "speech", "transcript": f"clip {i}"})
    rows += extra_rows or []
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _upload(s3, folder: Path, prefix: str) -> None:
    client = s3.server.client()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=s3.server.bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}",
                              Body=p.read_bytes())


def _stop_server_at(monkeypatch, s3, clip: int, restart_after: float | None = None) -> threading.Timer:
    """Fault injection: the S3 server is killed when prepare asks for its `clip`-th object (and, with
    `restart_after`, started again that many seconds later, as a short outage). Returns the restart timer."""
    real, seen = prepare._check_worker, [0]
    timer = threading.Timer(restart_after or 0, s3.start)

    def worker(task):
        seen[0] += 1
        if seen[0] == clip:
            s3.stop()
            if restart_after is not None:
                timer.start()
        return real(task)

    monkeypatch.setattr(prepare, "_check_worker", worker)
    return timer


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def s3_corpus(s3_restartable, tmp_path, monkeypatch) -> list[dict]:
    """40 good clips uploaded to the restartable S3 server (its credentials in the environment, cwd tmp_path);
    returns the `prepare.sources` that read them."""
    for k, v in s3_restartable.server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    _upload(s3_restartable, _corpus(tmp_path / "corpus", 40), "c")
    return [{"name": "s3", "kind": "manifest", "path": f"s3://{s3_restartable.server.bucket}/c"}]


@pytest.mark.timeout(120)
def test_s3_outage_mid_prepare_fails_in_one_line_and_marks_nothing_bad(s3_restartable, s3_corpus, tmp_path,
                                                                        monkeypatch):
    params = _params(tmp_path, s3_corpus)
    first = run_prepare(params, progress=False)
    assert first["clips"] == 40 and first["quarantined"]["total"] == 0
    before = _snapshot(tmp_path / "manifests")

    _stop_server_at(monkeypatch, s3_restartable, clip=5)
    start = time.monotonic()
    with pytest.raises(PrepareError) as err:
        run_prepare(params, progress=False)
    message = str(err.value)
    assert time.monotonic() - start < 30
    assert "\n" not in message and s3_restartable.server.endpoint in message and "failed 3 time(s)" in message
    assert "Nothing was quarantined" in message and "AWS_ENDPOINT_URL" in message
    assert _snapshot(tmp_path / "manifests") == before, "an outage must leave the previous manifests as they were"
    assert not (tmp_path / "manifests.partial").exists()


@pytest.mark.timeout(120)
def test_short_s3_outage_is_retried_and_every_good_clip_kept(s3_restartable, s3_corpus, tmp_path, monkeypatch):
    params = _params(tmp_path, s3_corpus, io={"retries": 8, "backoff_s": 0.2, "max_wait_s": 1.0})
    restart = _stop_server_at(monkeypatch, s3_restartable, clip=4, restart_after=1.0)  # clip-404.wav: the 4th
    summary = run_prepare(params, progress=False)
    restart.join()
    assert summary["clips"] == 40 and summary["quarantined"] == {"total": 0, "by_reason": {}, "by_source": {}}
    assert "s3/clip-404" in {c.id for c in iter_clips(tmp_path / "manifests")}


def test_dead_s3_endpoint_fails_in_one_line_from_the_cli(tmp_path):
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params = deep_merge(params, {"tracking": {"enabled": False}, "io": FAST_IO, "prepare": {
        "sources": [{"name": "s3", "kind": "manifest", "path": "s3://nowhere/corpus"}]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.run([sys.executable, "-m", "desta.cli", "prepare"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if not ln.split(" ", 1)[-1].startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error: source 's3'"), proc.stderr
    assert "S3 endpoint http://127.0.0.1:9" in lines[0] and "Traceback" not in proc.stderr


def test_mistyped_metadata_rows_are_quarantined_and_the_rest_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, freq in (("g.wav", 510), ("t.wav", 520), ("s.wav", 530)):
        fixtures.tone(tmp_path / "corpus" / name, seconds=0.3, freq=freq)
    _corpus(tmp_path / "corpus", 3, [{"file": "g.wav", "domain": "speech", "gender": 5},
                                     {"file": "t.wav", "domain": "music", "music_tempo_bpm": "fast"},
                                     {"file": "s.wav", "domain": "sound", "sound_labels": "rain"}])
    summary = run_prepare(_params(tmp_path, [{"name": "c", "kind": "manifest", "path": "corpus"}]), progress=False)
    assert summary["clips"] == 3 and summary["quarantined"]["by_reason"] == {"bad_metadata": 3}
    report = [json.loads(line) for line in (tmp_path / "manifests/quarantine.jsonl").read_text().splitlines()]
    details = {r["where"].rsplit(":", 1)[1]: r["detail"] for r in report}
    assert "field `gender` must be a string" in details["4"] and "metadata.jsonl:4" in details["4"]
    assert "field `music_tempo_bpm` must be a finite number" in details["5"]
    assert "field `sound_labels` must be a list of strings" in details["6"]
    assert not list((tmp_path / "manifests").glob("*.tmp"))


@pytest.mark.timeout(60)
def test_metadata_paths_that_leave_the_corpus_are_never_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "corpus"
    fixtures.tone(tmp_path / "other" / "x.wav", freq=610)  # a real audio file beside the corpus
    fixtures.tone(tmp_path / "outside.wav", freq=620)
    root.mkdir()
    (root / "link.wav").symlink_to(tmp_path / "outside.wav")
    fixtures.tone(tmp_path / "corpus" / "inner" / "real.wav", freq=630)
    (root / "inner-link.wav").symlink_to(root / "inner" / "real.wav")  # a symlink inside the root is fine
    os.mkfifo(root / "pipe.wav")
    rows = [{"file": f, "domain": "speech"} for f in (
        "/etc/passwd", "../other/x.wav", "link.wav", "pipe.wav", "/dev/zero", "inner/../../outside.wav",
        "inner-link.wav")]
    _corpus(root, 2, rows)
    start = time.monotonic()
    summary = run_prepare(_params(tmp_path, [{"name": "c", "kind": "manifest", "path": "corpus"}]), progress=False)
    assert time.monotonic() - start < 30, "a FIFO or a device must not block prepare"
    assert summary["clips"] == 3 and summary["quarantined"]["by_reason"] == {"bad_path": 6}
    report = {json.loads(line)["where"].rsplit(":", 1)[1]: json.loads(line)["detail"]
              for line in (tmp_path / "manifests/quarantine.jsonl").read_text().splitlines()}
    assert "not a path inside the source root" in report["3"] and "not a path inside" in report["4"]
    assert "leads outside the source root" in report["5"] and "is a FIFO" in report["6"]


def _half_mp3(path: Path) -> None:
    t = np.arange(32000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="MP3")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_bookkeeping_counts_once_reruns_match_and_ids_are_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "corpus"
    fixtures.tone(root / "x.wav", freq=700)
    fixtures.tone(root / "x.WAV", freq=710)
    fixtures.tone(root / "x.flac", freq=720)
    _half_mp3(root / "half.mp3")
    (root / "junk.wav").write_bytes(b"not audio" * 50)  # libsndfile's error names a BytesIO object and its address
    rows = [{"file": f, "domain": "speech"} for f in ("x.wav", "x.WAV", "x.flac", "half.mp3", "junk.wav")]
    _corpus(root, 2, rows)
    params = _params(tmp_path, [{"name": "c", "kind": "manifest", "path": "corpus"}])
    summary = run_prepare(params, progress=False)
    assert summary["clips"] == 3
    assert summary["quarantined"]["by_reason"] == {"duplicate_id": 2, "truncated": 1, "unreadable": 1}
    assert summary["quarantined"]["total"] == 4 and summary["quarantined"]["by_source"] == {"c": 4}
    ids = [c.id for c in iter_clips(tmp_path / "manifests")]
    assert len(ids) == len(set(ids)) and "c/x" in ids
    first = _snapshot(tmp_path / "manifests")
    assert b"0x" not in first["quarantine.jsonl"]
    run_prepare(params, progress=False)
    assert _snapshot(tmp_path / "manifests") == first, "identical reruns write identical bytes"


@pytest.mark.timeout(180)
def test_kill_9_with_a_changed_corpus_never_mixes_old_and_new_shards(tmp_path):
    root = tmp_path / "corpus"
    _corpus(root, 30)
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params = deep_merge(params, {"tracking": {"enabled": False}, "prepare": {
        "workers": 1, "shard_size": 5, "sources": [{"name": "c", "kind": "manifest", "path": "corpus"}]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "desta.cli", "prepare"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    before = _snapshot(tmp_path / "data/manifests")
    _corpus(root, 400)  # the corpus changes: 400 clips, 80 shards
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "data/manifests.partial"
    deadline = time.monotonic() + 100
    while not (partial / "manifest-00002.parquet").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.is_dir(), "killed mid-run"
    assert _snapshot(tmp_path / "data/manifests") == before, "the old summary still describes exactly its shards"
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    after = json.loads((tmp_path / "data/manifests/summary.json").read_text())
    assert after["clips"] == 400 and after["shards"] == 80 and not partial.exists()
    assert len(list((tmp_path / "data/manifests").glob("manifest-*.parquet"))) == 80


def test_full_disk_fails_in_one_line_and_leaves_no_partial_shard(tmp_path):
    _corpus(tmp_path / "corpus", 60)
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params = deep_merge(params, {"tracking": {"enabled": False}, "prepare": {
        "workers": 1, "shard_size": 50, "sources": [{"name": "c", "kind": "manifest", "path": "corpus"}]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/manifests").mkdir(parents=True)
    (tmp_path / "data/manifests/summary.json").write_text('{"clips": 1}\n')  # an earlier run's output

    def small_disk():  # files beyond 4 KiB fail with EFBIG, as a full disk fails with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([sys.executable, "-m", "desta.cli", "prepare"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, preexec_fn=small_disk,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no space left while writing the manifests" in errors[0], proc.stderr
    assert (tmp_path / "data/manifests/summary.json").read_text() == '{"clips": 1}\n'
    assert not (tmp_path / "data/manifests.partial").exists()
    assert not list((tmp_path / "data").rglob("*.tmp"))
