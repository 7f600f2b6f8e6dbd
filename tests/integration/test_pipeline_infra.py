"""infra/ as far as this machine allows (no Docker engine, no compose plugin): the compose file parses, has the
services the pipeline needs, and its ports, env and volumes are consistent with each other, with .env.example,
with infra/prefect.yaml and with params.yaml; the loopback servers script is valid bash."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
ENV_EXAMPLE = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))


def test_services_and_ports():
    services = COMPOSE["services"]
    assert {"s3", "postgres", "mlflow", "prefect-server", "prefect-worker"} <= set(services)
    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {host_ports}"
    assert {"5000", "4200", "9000"} <= set(host_ports)


def test_dependencies_and_volumes_exist():
    services, volumes = COMPOSE["services"], set(COMPOSE.get("volumes", {}))
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert src in volumes or (INFRA / src).exists(), f"{name}: volume source {src} missing"
    assert (ROOT / services["prefect-worker"]["build"]["dockerfile"]).is_file()


def test_env_consistency():
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used <= set(ENV_EXAMPLE), f"compose uses variables missing from .env.example: {used - set(ENV_EXAMPLE)}"
    services = COMPOSE["services"]
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:9000"
    assert "--artifacts-destination s3://${MLFLOW_BUCKET}/" in " ".join(services["mlflow"]["command"].split())
    assert "postgresql://" in services["mlflow"]["command"]
    worker = services["prefect-worker"]["environment"]
    assert worker["PREFECT_API_URL"].startswith("http://prefect-server:4200")
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and worker["AWS_ENDPOINT_URL"] == "http://s3:9000"
    for svc in services.values():  # telemetry off everywhere it applies
        env = svc.get("environment", {})
        if "MLFLOW_S3_ENDPOINT_URL" in env or "PREFECT_API_URL" in env:
            assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true" or env.get("DO_NOT_TRACK") == "true"


def test_prefect_yaml_matches_params_and_flow():
    prefect = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    pipeline = yaml.safe_load((ROOT / "params.yaml").read_text())["pipeline"]
    (dep,) = prefect["deployments"]
    assert dep["name"] == pipeline["deployment"]
    assert dep["schedules"][0]["cron"] == pipeline["cron"]
    path, fn = dep["entrypoint"].split(":")
    assert f"def {fn}(" in (ROOT / path).read_text()
    assert dep["work_pool"]["name"] in COMPOSE["services"]["prefect-worker"]["command"]


def test_scripts_are_valid_bash():
    for script in ("servers.sh", "setup.sh", "s3/create-buckets.sh"):
        subprocess.run(["bash", "-n", str(INFRA / script)], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks/pipeline_walltime.sh")], check=True)
