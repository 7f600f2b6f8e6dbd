"""Shared test set-up: offline/telemetry-off environment from the start of the session, and the server fixtures
(`s3_server`, `s3_restartable` from tests/fixtures_s3.py; `mlflow_server`, `mlflow_restartable`, `prefect_server`
from tests/fixtures_servers.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from fixtures_s3 import s3_restartable, s3_server  # noqa: F401  (pytest fixtures re-exported for every test)
from fixtures_servers import mlflow_restartable, mlflow_server, prefect_server  # noqa: F401

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "TOKENIZERS_PARALLELISM": "false",
    "DS_ACCELERATOR": "cpu", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


_PREFECT_HOME = pytest.StashKey[str]()


def pytest_configure(config) -> None:
    """Before any test module is imported: never reach the network, keep Prefect's state out of ~/.prefect, and
    make subprocesses (`python -m desta ...`, `desta`, `dvc repro`) import this checkout's src/ first."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    src = str(Path(__file__).resolve().parents[1] / "src")
    if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != src:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    if "PREFECT_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="desta-prefect-home-")
        os.environ["PREFECT_HOME"] = home
        config.stash[_PREFECT_HOME] = home


def pytest_unconfigure(config) -> None:
    """Remove the session's own PREFECT_HOME (about 5 MB of SQLite and logs per run), not one the caller set."""
    home = config.stash.get(_PREFECT_HOME, None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


LEAKY_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI into os.environ (and desta.tracking sets MLflow's
    HTTP retry/time-out variables from params `io:`); without this, one test's settings would become the default of
    every later test and of the subprocesses they start."""
    saved = {k: os.environ.get(k) for k in LEAKY_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
