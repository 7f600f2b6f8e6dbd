"""End-to-end smoke pipeline (infra/profiles/smoke.yaml) in a copy of the project: `dvc repro` under one MLflow
parent run on a real MLflow server with S3 artifacts, the champion alias, a no-op second repro, a train-param edit
that re-runs only train and what follows, `dvc push`/`dvc pull` through the S3 server; then the Prefect flow: the
validation gate failing a run on a real Prefect server, and a full ephemeral retrain."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from desta.pipeline import make_workspace

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DESTA_PARENT_RUN_ID", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def _search(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = make_workspace(ROOT, tmp_path_factory.mktemp("smoke") / "ws", profile="smoke")
    shutil.copytree(ROOT / "flows", ws / "flows")
    return ws


def test_dvc_repro_smoke_end_to_end(workspace, mlflow_server, s3_server):
    env = {**s3_server.env, **mlflow_server.env}
    out = _ok(_run([sys.executable, "-m", "desta.pipeline", "repro"], workspace, env))
    summary = yaml.safe_load(out[out.rindex("workdir:"):])
    assert summary["ran"] == ["prepare", "generate", "validate", "train", "evaluate", "register"]
    assert json.loads((workspace / "data/eval/metrics.json").read_text())
    registry = json.loads((workspace / "data/eval/registry.json").read_text())
    assert registry["version"] == 1 and registry["previous_champion"] is None and registry["promoted"] is True

    # MLflow server: one parent run with a nested run per stage; champion alias; artifacts in S3
    runs = _search(mlflow_server.url + "/api/2.0/mlflow/runs/search",
                   {"experiment_ids": [_experiment_id(mlflow_server.url)], "max_results": 100})["runs"]
    children = [r for r in runs if {"key": "mlflow.parentRunId", "value": summary["parent_run_id"]}
                in r["data"].get("tags", [])]
    train = next(r for r in children if {"key": "desta.stage", "value": "train"} in r["data"]["tags"])
    inputs = {d["dataset"]["name"] for d in train.get("inputs", {}).get("dataset_inputs", [])}
    assert {"manifests", "generated", "validation"} <= inputs, "stage runs record their input data sets"
    assert sorted(t["value"] for r in children for t in r["data"]["tags"] if t["key"] == "desta.stage") == sorted(
        summary["ran"])
    with urllib.request.urlopen(f"{mlflow_server.url}/api/2.0/mlflow/registered-models/alias?name=desta-audio"
                                f"&alias=champion", timeout=30) as r:
        assert json.loads(r.read())["model_version"]["version"]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]]
    assert any(k.endswith("MLmodel") for k in keys)

    # second repro: nothing to do; a train param edit re-runs only train, evaluate, register
    assert "Data and pipelines are up to date" in _ok(_run([str(BIN / "dvc"), "repro"], workspace, env))
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # (a real run: `--dry` cannot know that train's new outputs invalidate what follows)
    rerun = _ok(_run([str(BIN / "dvc"), "repro"], workspace, env))
    ran = [ln.split("'")[1] for ln in rerun.splitlines() if ln.startswith("Running stage")]
    assert ran == ["train", "evaluate", "register"], rerun

    # DVC remote on the S3 server: push, lose the cache and an output, pull it back
    _ok(_run([sys.executable, "-m", "desta.pipeline", "remote", "--url", f"s3://{s3_server.bucket}/dvc"],
             workspace, env))
    assert "pushed" in _ok(_run([str(BIN / "dvc"), "push"], workspace, env))
    shutil.rmtree(workspace / ".dvc/cache")
    shutil.rmtree(workspace / "data/model")
    _ok(_run([str(BIN / "dvc"), "pull"], workspace, env))
    assert (workspace / "data/model/loss.csv").is_file()


def test_champion_is_served_by_mlflow_models_serve(workspace, mlflow_server, s3_server):
    """The registered pyfunc answers audio + instruction requests through `mlflow models serve` (REST)."""
    from fixtures_s3 import _free_port
    from fixtures_servers import wait_http

    if not (workspace / "data/eval/registry.json").is_file():
        pytest.skip("needs the registered model of test_dvc_repro_smoke_end_to_end")
    port = _free_port()
    log = workspace / "serve.log"
    env = {**os.environ, **s3_server.env, **mlflow_server.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/desta-audio@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=workspace, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=180)
        import soundfile as sf

        clip = max((workspace / "data/raw/demo").rglob("*.wav"), key=lambda p: sf.info(p).duration)
        assert sf.info(clip).duration > 2.0, "a multi-second clip"
        audio = base64.b64encode(clip.read_bytes()).decode()  # server paths are refused unless serve_audio_root
        body = {"dataframe_records": [{"audio": audio, "instruction": "Describe the audio."}],
                "params": {"max_new_tokens": 8}}
        answer = _search(f"http://127.0.0.1:{port}/invocations", body)
        assert isinstance(answer["predictions"][0]["answer"], str) and answer["predictions"][0]["answer"].strip()
        # installable outside this venv: the model requires the project wheel it carries (with its declared deps)
        import mlflow

        mlflow.set_tracking_uri(mlflow_server.url)
        local = Path(mlflow.artifacts.download_artifacts("models:/desta-audio@champion", dst_path=str(workspace)))
        reqs = [ln for ln in (local / "requirements.txt").read_text().splitlines() if ln.strip()]
        wheel = next(r for r in reqs if r.endswith(".whl"))
        assert (local / wheel).is_file() and not any(r.split("=")[0].strip() == "desta" for r in reqs)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _experiment_id(url: str) -> str:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=desta",
                                timeout=30) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def test_validation_gate_fails_the_flow_on_prefect_server(workspace, prefect_server, tmp_path):
    ws = tmp_path / "gate"
    shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns("data", "mlflow.db", "mlartifacts", ".dvc"))
    cmd = [sys.executable, "flows/retrain.py", "--profile", "smoke", "-S", "generate.max_clips=4",
           "-S", "validate.max_duration_s=0.3", "-S", "tracking.enabled=false"]
    proc = _run(cmd, ws, prefect_server.env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "validation gate failed" in proc.stderr and "report: file://" in proc.stderr
    assert not (ws / "data/model").exists()  # train never ran
    runs = [r for r in _search(prefect_server.url + "/flow_runs/filter", {}) if r["state_type"] != "SCHEDULED"]
    assert runs and all(r["state_type"] == "FAILED" for r in runs), [r["state_type"] for r in runs]


def test_retrain_flow_ephemeral(workspace, tmp_path):
    ws = tmp_path / "flow"
    shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns("data", "mlflow.db", "mlartifacts", ".dvc"))
    cmd = [sys.executable, "flows/retrain.py", "--profile", "smoke", "-S", "generate.max_clips=8",
           "-S", "train.max_steps=2", "-S", "train.eval_every=2", "-S", "train.save_every=2"]
    proc = _run(cmd, ws, {})  # no PREFECT_API_URL: ephemeral API
    out = _ok(proc)
    result = json.loads(out[out.index("{"):])
    assert set(result) >= {"prepare", "generate", "validate", "train", "evaluate", "register", "parent_run_id"}

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{ws}/mlflow.db")
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    assert sorted(r.data.tags["desta.stage"] for r in children) == sorted(
        ["prepare", "generate", "validate", "train", "evaluate", "register"])
