"""A source on s3:// read through boto3 against a real S3 server on loopback (rclone serve s3).
Run: pytest tests/data/test_remote_s3.py"""

import json
import sys
from pathlib import Path

import fixtures
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the shared s3_server fixture
import fixtures_s3  # noqa: E402
from params_util import default_params

from desta.data.manifest import iter_clips  # noqa: E402
from desta.data.prepare import PrepareError, run_prepare  # noqa: E402

pytestmark = pytest.mark.integration
s3_server = fixtures_s3.s3_server  # the shared fixture, made visible to this module


def _upload(server, folder: Path, prefix: str) -> None:
    client = server.client()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=server.bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}",
                              Body=p.read_bytes())


def test_prepare_reads_an_s3_prefix_and_keeps_secrets_out(s3_server, tmp_path, monkeypatch):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    _upload(s3_server, fixtures.esc50(tmp_path / "esc"), "corpora/esc50")
    _upload(s3_server, fixtures.bad_inputs(tmp_path / "bad"), "corpora/mixed")
    uri = f"s3://{s3_server.bucket}/corpora"
    params = default_params({"tracking": {"enabled": False}, "prepare": {
        "workers": 2, "quality": {"max_duration_s": 6.0},
        "sources": [{"name": "esc", "kind": "esc50", "path": f"{uri}/esc50"},
                    {"name": "mixed", "kind": "manifest", "path": f"{uri}/mixed"}]}})
    summary = run_prepare(params, progress=False)
    assert summary["by_source"] == {"esc": {"clips": 2, "hours": pytest.approx(10 / 3600, abs=1e-4)},
                                    "mixed": {"clips": 4, "hours": pytest.approx(7 / 3600, abs=1e-4)}}
    audio = sorted(c.audio for c in iter_clips("data/manifests"))
    assert audio[0] == f"{uri}/esc50/audio/1-100032-A-0.wav" and all(a.startswith("s3://") for a in audio)
    assert summary["quarantined"]["by_reason"]["missing"] == 1  # absent.wav: listed, not uploaded
    written = "".join(p.read_text() for p in (tmp_path / "data/manifests").glob("*.json*"))
    written += json.dumps([c.__dict__ for c in iter_clips("data/manifests")], default=str)
    assert s3_server.secret_key not in written and s3_server.access_key not in written
    assert s3_server.endpoint.split("//")[1] not in written


def test_missing_s3_prefix_fails_before_work(s3_server, tmp_path, monkeypatch):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    params = default_params({"tracking": {"enabled": False}, "prepare": {
        "sources": [{"name": "v", "kind": "vctk", "path": f"s3://{s3_server.bucket}/nothing-here"}]}})
    with pytest.raises(PrepareError, match="speaker-info.txt: not found; expected"):
        run_prepare(params, progress=False)


def test_clip_reads_at_train_time_use_the_installed_io_policy(monkeypatch):
    """desta.data.audio.load_audio on an s3:// URI (training, evaluation) retries with the policy the stage installed
    from params `io:` and, when the endpoint stays away, fails as an unreadable clip naming the URI."""
    import time

    from desta.data import remote
    from desta.data.audio import AudioError, load_audio
    from desta.io_retry import RetryPolicy

    dead = f"http://127.0.0.1:{fixtures_s3._free_port()}"  # nothing listens there
    for k, v in {"AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(remote, "_POLICY", [])
    assert remote.io_policy() == remote.FALLBACK_POLICY
    remote.use_io_policy(RetryPolicy(retries=1, backoff_s=0.1, max_wait_s=0.1, timeout_s=2.0))
    start = time.monotonic()
    with pytest.raises(AudioError, match=r"s3://bucket/clip\.wav.*failed 2 time") as err:
        load_audio("s3://bucket/clip.wav")
    assert err.value.reason == "unreadable" and time.monotonic() - start < 10
