"""Pytest fixtures for real servers on loopback, started and stopped by the test session (no mocks):
`mlflow_server` (SQLite backend, artifacts proxied to the `s3_server` bucket) and `prefect_server`
(`prefect server start`, SQLite). Registered for every test by tests/conftest.py.
`mlflow_restartable` (module scope) yields an `MlflowProcess` whose `stop()` / `start()` (a crash) and `pause()` /
`resume()` (a stall) cut the tracking server mid-stage (same port, SQLite file and artifacts: runs survive).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures_s3 import _free_port

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Server:
    url: str
    env: dict[str, str]  # what a client process needs to talk to it
    log: Path


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer (exit {proc.poll()}): {log.read_text()[-3000:]}")
        time.sleep(0.5)


def _start_mlflow(tmp_path_factory, s3_server) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**s3_server.env, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = root / "mlflow.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", f"s3://{s3_server.bucket}/mlflow"]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log)
        yield Server(url, {"MLFLOW_TRACKING_URI": url, "MLFLOW_DISABLE_TELEMETRY": "true"}, log)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server) -> Iterator[Server]:
    """`mlflow server` on loopback: SQLite backend, artifacts proxied into s3://<bucket>/mlflow on the S3 server."""
    yield from _start_mlflow(tmp_path_factory, s3_server)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[Server]:
    """`prefect server start` on loopback with its own PREFECT_HOME (SQLite)."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "PREFECT_UI_ENABLED": "true"}
    log = home / "prefect.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{url}/health", proc, log, timeout=120)
        yield Server(url, {"PREFECT_API_URL": url}, log)
    finally:
        os.killpg(proc.pid, 2)  # prefect server stops on SIGINT
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


class MlflowProcess:
    """`mlflow server` (SQLite, local proxied artifacts) that a test can stop and start again on the same port."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--artifacts-destination", str(self.root / "artifacts")]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/health", self.proc, self.log)

    def stop(self) -> None:
        """Killed (SIGKILL, as a crash): connections are refused until `start`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=15)
        self.proc = None

    def pause(self) -> None:
        """Stalled (SIGSTOP): connections are accepted but never answered, so clients run into their time-outs."""
        os.killpg(self.proc.pid, 19)

    def resume(self) -> None:
        os.killpg(self.proc.pid, 18)

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        else:
            self.resume()


@pytest.fixture(scope="module")
def mlflow_restartable(tmp_path_factory) -> Iterator[MlflowProcess]:
    """One per test module (a start costs seconds); a test that stops or pauses it calls `ensure_running` first."""
    server = MlflowProcess(tmp_path_factory.mktemp("mlflow-outage"))
    server.start()
    try:
        yield server
    finally:
        server.ensure_running()
        server.stop()
