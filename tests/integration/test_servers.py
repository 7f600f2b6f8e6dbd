"""Real servers on loopback: the tracking code logs to an MLflow server whose artifacts land in the S3 server,
the MLflow UI and REST API show the runs, and the retrain deployment registers its cron schedule on a Prefect
server. Started and stopped by the fixtures in tests/fixtures_servers.py and tests/fixtures_s3.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from params_util import default_params

from desta.tracking import PARENT_ENV, parent_run, stage_run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _get(url: str, data: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read().decode()


def test_mlflow_server_runs_artifacts_in_s3_ui_and_rest(mlflow_server, s3_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    params = default_params()
    params.tracking.tracking_uri, params.tracking.experiment = mlflow_server.url, "server-test"
    (tmp_path / "report.json").write_text('{"success": true}')
    with parent_run(params, "retrain") as parent:
        with stage_run(params, "validate", params.validate_) as tracker:
            tracker.log_metrics({"expectations": 12})
            tracker.log_artifact(tmp_path / "report.json", "validation")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket).get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith("validation/report.json") for k in keys), keys

    status, html = _get(mlflow_server.url + "/")
    assert status == 200 and "<html" in html.lower()
    status, body = _get(mlflow_server.url + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-test")
    exp_id = json.loads(body)["experiment"]["experiment_id"]
    _, body = _get(mlflow_server.url + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})
    runs = {r["info"]["run_id"]: r for r in json.loads(body)["runs"]}
    child = runs[tracker.run_id]
    tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
    assert parent.run_id in runs and tags["mlflow.parentRunId"] == parent.run_id
    assert {"key": "expectations", "value": 12.0} in [{k: m[k] for k in ("key", "value")}
                                                      for m in child["data"]["metrics"]]


def test_retrain_deployment_schedule_on_prefect_server(prefect_server, tmp_path):
    """The deployment built from params.yaml `pipeline:` is applied to the server with its cron schedule."""
    script = (
        "import sys, asyncio; sys.path.insert(0, 'flows')\n"
        "from deploy import build_deployment\n"
        "from prefect.client.orchestration import get_client\n"
        "dep_id = build_deployment('params.yaml').apply()\n"
        "async def show():\n"
        "    async with get_client() as c:\n"
        "        d = await c.read_deployment(dep_id)\n"
        "        print('RESULT', d.name, [s.schedule.cron for s in d.schedules], d.parameters['params_path'])\n"
        "asyncio.run(show())\n")
    env = {**os.environ, **prefect_server.env}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    pipeline = yaml.safe_load((ROOT / "params.yaml").read_text())["pipeline"]
    assert pipeline["deployment"] in line and repr(pipeline["cron"]) in line
    status, _ = _get(prefect_server.url.removesuffix("/api") + "/")
    assert status == 200
