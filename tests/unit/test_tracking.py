"""Tracking against the embedded store (real MLflow, SQLite in tmp): parent/nested runs, lineage with DVC hashes,
secret filtering, the champion rule and the pyfunc's input handling."""

from __future__ import annotations

import base64
import json
import os

import pytest
from params_util import tracked_params

from desta.registry import RegistryError, _audio_to_path, is_better, read_metric
from desta.tracking import PARENT_ENV, dvc_hashes, numeric_metrics, parent_run, quick_digest, safe_params, stage_run


@pytest.fixture
def params(tmp_path, monkeypatch):
    return tracked_params(tmp_path, monkeypatch, "unit")


def test_stage_runs_nest_under_parent_with_lineage(params, tmp_path):
    import mlflow

    (tmp_path / "data/manifests").mkdir(parents=True)
    (tmp_path / "data/manifests/summary.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  prepare:\n    cmd: desta prepare\n    outs:\n"
                                       "    - path: data/manifests\n      md5: abc123.dir\n")
    with parent_run(params, "retrain") as parent:
        assert os.environ[PARENT_ENV] == parent.run_id
        with stage_run(params, "generate", params.generate) as tracker:
            tracker.log_metrics({"records": 3, "skip": None})
    assert PARENT_ENV not in os.environ
    child = mlflow.get_run(tracker.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.data.params["generate.prompts_per_clip"] == str(params.generate.prompts_per_clip)
    assert child.data.metrics == {"records": 3.0}
    assert child.data.tags["desta.dvc.manifests"] == "abc123.dir"
    assert [d.dataset.digest for d in child.inputs.dataset_inputs] == ["abc123.dir"]
    assert mlflow.get_experiment(child.info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development", "the MLflow UI must open the experiment on its training runs"


def test_disabled_tracking_is_silent(params, tmp_path):
    params.tracking.enabled = False
    with stage_run(params, "train", params.train) as tracker:
        tracker.log_metrics({"loss": 1.0})
    assert not tracker.enabled and not (tmp_path / "mlflow.db").exists()


def test_helpers(tmp_path):
    assert safe_params({"s3": {"secret_access_key": "x", "bucket": "b"}}) == {"s3.bucket": "b"}
    assert numeric_metrics({"heldout": {"accuracy": 0.5, "n": 4, "ok": True, "name": "x"}}) == {
        "heldout/accuracy": 0.5, "heldout/n": 4.0}
    assert dvc_hashes(tmp_path / "missing.lock") == {}
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x.txt").write_text("1")
    before = quick_digest(tmp_path / "a")
    (tmp_path / "a/x.txt").write_text("2")
    assert quick_digest(tmp_path / "a") != before


def test_champion_rule_and_metric_lookup(tmp_path):
    assert is_better(0.5, None, True) and is_better(0.5, 0.4, True) and not is_better(0.4, 0.4, True)
    assert is_better(0.3, 0.4, False) and not is_better(0.5, 0.4, False)
    f = tmp_path / "metrics.json"
    f.write_text(json.dumps({"heldout": {"accuracy": 0.25}}))
    assert read_metric(f, "heldout/accuracy") == read_metric(f, "heldout.accuracy") == 0.25
    with pytest.raises(RegistryError, match="tracking.champion_metric"):
        read_metric(f, "heldout/f1")


def test_pyfunc_audio_input(tmp_path):
    data = base64.b64encode(b"RIFFdata").decode()
    assert open(_audio_to_path(data, tmp_path, 1), "rb").read() == b"RIFFdata"
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF....")
    with pytest.raises(RegistryError, match="reads no server paths"):  # off by default: bytes only
        _audio_to_path(str(wav), tmp_path, 0)
    with pytest.raises(RegistryError, match="column `audio`"):
        _audio_to_path("not a file!", tmp_path, 2)


def test_pyfunc_reads_only_regular_files_under_its_root_and_refuses_the_rest_alike(tmp_path):
    root, out = tmp_path / "served", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    (root / "clip.wav").write_bytes(b"RIFFclip")
    (tmp_path / "secret.wav").write_bytes(b"RIFFsecret")
    (root / "escape.wav").symlink_to(tmp_path / "secret.wav")
    os.mkfifo(root / "pipe.wav")
    path = _audio_to_path("clip.wav", out, 0, str(root))
    assert open(path, "rb").read() == b"RIFFclip" and path.startswith(str(out))  # a private copy
    assert open(_audio_to_path(str(root / "clip.wav"), out, 0, str(root)), "rb").read() == b"RIFFclip"
    messages = set()
    for refused in ("/etc/passwd", "/etc/no-such-file", "../secret.wav", str(tmp_path / "secret.wav"),
                    "escape.wav", "pipe.wav", "absent.wav", "/dev/zero"):
        with pytest.raises(RegistryError) as err:
            _audio_to_path(refused, out, 3, str(root))
        messages.add(str(err.value))
    assert len(messages) == 1, "a missing and a present file must be refused alike (no existence oracle)"


def test_credentials_in_urls_are_redacted_from_params_tags_and_messages():
    from desta.io_retry import describe, redact_url

    url = "https://alice:s3cr3t@judge.example.com/v1"
    assert safe_params({"judge": {"base_url": url}}) == {"judge.base_url": "https://***@judge.example.com/v1"}
    assert redact_url(f"POST {url} failed") == "POST https://***@judge.example.com/v1 failed"
    assert "s3cr3t" not in describe(ConnectionError(f"cannot reach {url}"))
