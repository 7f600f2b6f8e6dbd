"""A tracking server that goes away never costs a stage: against a real `mlflow server` that the test kills and
starts again, training finishes at full speed, every metric arrives (at once when the server is back mid-run, or
from the spool after it) and the run ends FINISHED, never RUNNING; a crashed stage's run ends FAILED; a dead
tracking address fails `prepare` and `register` in one line. Run: pytest tests/integration/test_tracking_outage.py"""

from __future__ import annotations

import os
import subprocess
import sys
import sys as _sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures_s3 import _free_port
from params_util import PARAMS_FILE

_sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_train_fixtures import TinyAudioLM, make_generated  # noqa: E402
from test_train_recipe import tiny_params  # noqa: E402

from desta.config import deep_merge  # noqa: E402
from desta.io_retry import RetryPolicy  # noqa: E402
from desta.tracking_outbox import SPOOL_DIR, sync  # noqa: E402
from desta.train.recipe import run_train  # noqa: E402

pytestmark = pytest.mark.integration
FAST_IO = {"retries": 2, "backoff_s": 0.05, "max_wait_s": 0.2, "timeout_s": 2.0, "judge_timeout_s": 2.0}


def _params(tmp_path, server, **train):
    server.ensure_running()
    params = tiny_params(tmp_path, max_steps=8, eval_every=4, save_every=4, **train)
    params.tracking.enabled, params.tracking.tracking_uri = True, server.url
    params.tracking.experiment = tmp_path.name  # one experiment per test: the server is shared by the module
    params.io = params.io.model_validate(FAST_IO)
    return params


class Faulty(TinyAudioLM):
    """Runs `actions[n]` before its n-th training forward pass (micro-batch), as an outage would strike."""

    def __init__(self, actions):
        super().__init__(seed=1)
        self.actions, self.calls = actions, 0

    def forward(self, *args, **kwargs):
        if self.training:
            self.calls += 1
            if self.calls in self.actions:
                self.actions[self.calls]()
        return super().forward(*args, **kwargs)


def _run(client, run_id=None, experiment=None):
    """(status, steps with a train loss, steps with a val loss, artifact names); a call that timed out may have
    arrived after all and been sent again (at-least-once), so steps are compared as sets."""
    if run_id is None:
        run_id = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0].info.run_id
    run = client.get_run(run_id)
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/train_loss")})
    vals = sorted({m.step for m in client.get_metric_history(run_id, "train/val_loss")})
    return run.info.status, steps, vals, {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.timeout(180)
def test_training_outlives_a_tracking_outage_and_every_metric_arrives_later(mlflow_restartable, tmp_path,
                                                                             monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    make_generated(tmp_path, n_train=16, n_valid=4)
    params = _params(tmp_path, mlflow_restartable)
    start = time.monotonic()
    summary = run_train(params, lambda p: Faulty({4: mlflow_restartable.stop}))  # away from step 2 to the end
    assert summary["steps"] == 8 and time.monotonic() - start < 60
    spooled = list(SPOOL_DIR.glob("*.jsonl"))
    assert len(spooled) == 1
    run_id = spooled[0].stem

    mlflow_restartable.start()
    assert sync(mlflow_restartable.url, RetryPolicy(**{k: FAST_IO[k] for k in
                                                      ("retries", "backoff_s", "max_wait_s", "timeout_s")})) > 0
    status, steps, vals, artifacts = _run(MlflowClient(mlflow_restartable.url), run_id)
    assert status == "FINISHED" and steps == list(range(1, 9)) and vals == [0, 4, 8]
    assert "loss.csv" in artifacts and "train_metrics.json" in artifacts
    assert not list(SPOOL_DIR.glob("*")), "delivered calls leave nothing behind"


@pytest.mark.timeout(180)
def test_metrics_queued_while_the_server_stalls_are_delivered_when_it_answers(mlflow_restartable, tmp_path,
                                                                              monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    make_generated(tmp_path, n_train=16, n_valid=4)
    params = _params(tmp_path, mlflow_restartable)  # stalled (time-outs, not refusals) from step 2 to step 5
    summary = run_train(params, lambda p: Faulty({4: mlflow_restartable.pause, 10: mlflow_restartable.resume}))
    assert summary["steps"] == 8 and not SPOOL_DIR.exists()
    status, steps, vals, _ = _run(MlflowClient(mlflow_restartable.url), experiment=tmp_path.name)
    assert status == "FINISHED" and steps == list(range(1, 9)) and vals == [0, 4, 8]


@pytest.mark.timeout(120)
def test_a_crashed_stage_closes_its_run_failed(mlflow_restartable, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    make_generated(tmp_path, n_train=16, n_valid=4)

    def crash():
        raise FloatingPointError("simulated crash at step 3")

    with pytest.raises(FloatingPointError):
        run_train(_params(tmp_path, mlflow_restartable), lambda p: Faulty({5: crash}))
    assert _run(MlflowClient(mlflow_restartable.url), experiment=tmp_path.name)[0] == "FAILED"


def _cli(tmp_path, stage, changes):
    params = deep_merge(yaml.safe_load(PARAMS_FILE.read_text()), changes)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "desta.cli", stage], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    return proc, time.monotonic() - start


@pytest.mark.parametrize("stage", ["prepare", "register"])
def test_a_dead_tracking_address_fails_the_stage_in_one_line(tmp_path, stage):
    dead = f"http://127.0.0.1:{_free_port()}"
    (tmp_path / "data/model").mkdir(parents=True)
    (tmp_path / "data/model/desta_config.json").write_text("{}")  # register checks these before connecting
    (tmp_path / "data/eval").mkdir(parents=True)
    (tmp_path / "data/eval/metrics.json").write_text('{"heldout": {"accuracy": 0.5}}')
    proc, took = _cli(tmp_path, stage, {"tracking": {"tracking_uri": dead}, "io": FAST_IO,
                                        "prepare": {"sources": [{"name": "demo", "kind": "demo", "n_clips": 4}]}})
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert f"MLflow tracking server {dead}" in errors[0] and "tracking.enabled: false" in errors[0]
    assert took < 60
    assert not (tmp_path / "data/manifests").exists()
