"""One MLflow run per job (desta.tracking.job_run) against the embedded store (real MLflow, SQLite in tmp): other
ranks never touch MLflow, a relaunch that resumes continues the job's run, one that starts over closes the orphan,
and two processes creating the experiment at once do not fail. The 2-rank launches: test_train_multirank.py."""

from __future__ import annotations

import json

import mlflow
import pytest
from params_util import tracked_params

from desta.tracking import RUN_FILE, create_experiment_once, job_run


@pytest.fixture
def params(tmp_path, monkeypatch):
    return tracked_params(tmp_path, monkeypatch, "jobs")


def runs(params):
    client = mlflow.MlflowClient(params.tracking.tracking_uri)
    exp = client.get_experiment_by_name("jobs")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def test_other_ranks_get_a_silent_tracker(params, tmp_path):
    with job_run(params, "train", params.train, tmp_path / "ckpt", is_main=False, resumed=False,
                 complete=lambda: True) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=1)
    assert not tracker.enabled and not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ckpt").exists()


def test_interrupted_job_keeps_its_run_and_the_relaunch_continues_it(params, tmp_path):
    state = tmp_path / "ckpt"
    with job_run(params, "train", params.train, state, True, False, complete=lambda: False) as first:
        first.log_metrics({"train/train_loss": 2.0}, step=1)
    assert json.loads((state / RUN_FILE).read_text())["run_id"] == first.run_id
    assert [r.info.status for r in runs(params)] == ["KILLED"]

    # a bookkeeping key a relaunch may change: params are immutable in MLflow
    first_value, params.train.eval_every = params.train.eval_every, 7
    with job_run(params, "train", params.train, state, True, resumed=True, complete=lambda: True) as second:
        second.log_metrics({"train/train_loss": 1.5}, step=2)
    assert second.run_id == first.run_id and not (state / RUN_FILE).exists()
    (run,) = runs(params)
    assert run.info.status == "FINISHED" and run.data.tags["desta.launches"] == "2"
    assert run.data.params["train.eval_every"] == str(first_value)
    assert run.data.tags["desta.launch2.train.eval_every"] == "7"
    history = mlflow.MlflowClient(params.tracking.tracking_uri).get_metric_history(run.info.run_id,
                                                                                    "train/train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]


def test_a_job_that_starts_over_closes_the_killed_launchs_run(params, tmp_path):
    state = tmp_path / "ckpt"
    with job_run(params, "train", params.train, state, True, False, complete=lambda: False) as first:
        pass
    client = mlflow.MlflowClient(params.tracking.tracking_uri)
    client.update_run(first.run_id, status="RUNNING")  # what a SIGKILL leaves: the launch never ended its run
    with job_run(params, "train", params.train, state, True, resumed=False, complete=lambda: True) as second:
        pass  # no checkpoint to resume from (e.g. killed before the first one): the job starts over
    assert second.run_id != first.run_id
    assert {r.info.run_id: r.info.status for r in runs(params)} == {first.run_id: "KILLED",
                                                                     second.run_id: "FINISHED"}


def test_a_run_file_from_another_server_starts_a_new_run(params, tmp_path):
    state = tmp_path / "ckpt"
    state.mkdir()
    (state / RUN_FILE).write_text(json.dumps({"run_id": "0" * 32}))
    with job_run(params, "train", params.train, state, True, resumed=True, complete=lambda: True) as tracker:
        pass
    assert [r.info.run_id for r in runs(params)] == [tracker.run_id]


def test_experiment_created_meanwhile_by_another_process_is_used(params):
    mlflow.set_tracking_uri(params.tracking.tracking_uri)
    theirs = mlflow.create_experiment("jobs")  # the other process won the race after our lookup
    assert create_experiment_once(params.tracking) == theirs
