"""MLflow outages never cost a stage: what a stage logs goes through an outbox that delivers it in order.

With a tracking server (http/https URI) a thread delivers the calls; while the server is away they wait in memory
and are retried with the `io:` backoff, so training never blocks on MLflow. When the stage ends, what is still
undelivered (with the run's final status) is written to `.desta/tracking-outbox/<run_id>.jsonl` and delivered by
the next stage that reaches the server (`sync`), or by hand:

    python -m desta.tracking [-p params.yaml]      # deliver spooled calls now

Embedded stores (sqlite:, file:) are written directly. Used by desta/tracking.py only.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from desta.io_retry import RetryPolicy, causes, describe, redact_url

log = logging.getLogger(__name__)

SPOOL_DIR = Path(".desta/tracking-outbox")
BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits


def transient(err: BaseException) -> bool:
    """A refused/dropped connection, a time-out or a 5xx/429 answer from the tracking server."""
    import requests
    from mlflow.exceptions import MlflowException

    for e in causes(err):
        if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout |
                      requests.exceptions.RetryError | requests.exceptions.ChunkedEncodingError |
                      ConnectionError | TimeoutError):
            return True
        if isinstance(e, MlflowException) and "API request to" in str(e) and "failed with exception" in str(e):
            return True
        if isinstance(e, MlflowException) and (e.get_http_status_code() >= 500 or e.get_http_status_code() == 429):
            return True
    return False


def now_ms() -> int:
    return int(time.time() * 1000)


def deliver(client: Any, run_id: str, op: dict[str, Any]) -> None:
    """One queued call -> the MLflow client."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["kind"]
    if kind == "metrics":
        items = [Metric(k, v, op["ts"], op.get("step") or 0) for k, v in op["values"].items()]
        for i in range(0, len(items), BATCH["metrics"]):
            client.log_batch(run_id, metrics=items[i:i + BATCH["metrics"]])
    elif kind in ("params", "tags"):
        cls = Param if kind == "params" else RunTag
        items = [cls(k, v) for k, v in op["values"].items()]
        for i in range(0, len(items), BATCH[kind]):
            client.log_batch(run_id, **{kind: items[i:i + BATCH[kind]]})
    elif kind == "artifact":
        path = Path(op["path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), op.get("artifact_path"))
        elif path.is_file():
            client.log_artifact(run_id, str(path), op.get("artifact_path"))
    elif kind == "dict":
        client.log_dict(run_id, op["values"], op["name"])
    elif kind == "terminate":
        client.set_terminated(run_id, op["status"], op["end_time"])
    else:
        raise ValueError(f"unknown outbox call {kind!r}")


class Outbox:
    """The calls of one run, delivered in order. `background`: a thread delivers them (tracking servers); else each
    call is delivered at once (embedded stores, whose errors are raised)."""

    def __init__(self, uri: str, run_id: str, policy: RetryPolicy, background: bool, spool_dir: Path = SPOOL_DIR):
        from mlflow import MlflowClient

        self.uri, self.run_id, self.policy, self.spool_dir = uri, run_id, policy, spool_dir
        self.client = MlflowClient(uri)
        self.pending: deque[dict[str, Any]] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name=f"mlflow-outbox-{run_id[:8]}", daemon=True) \
            if background else None
        if self.thread is not None:
            self.thread.start()

    def put(self, op: dict[str, Any]) -> None:
        if self.thread is None:
            deliver(self.client, self.run_id, op)
            return
        with self.cond:
            self.pending.append(op)
            self.cond.notify()

    def _run(self) -> None:
        failures, after_close = 0, 0
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if not self.pending:
                    return
                op = self.pending[0]
            try:
                deliver(self.client, self.run_id, op)
            except Exception as err:
                if not transient(err):
                    log.warning("MLflow at %s refused a %s call for run %s (%s); it is dropped", redact_url(self.uri),
                                op["kind"], self.run_id, describe(err))
                    self._pop()
                    continue
                failures += 1
                after_close += self.closing
                if failures == 1:
                    log.warning("MLflow at %s is not answering (%s); tracking calls are queued and sent when it "
                                "answers again", redact_url(self.uri), describe(err))
                if after_close > self.policy.retries:
                    return
                with self.cond:
                    self.cond.wait(self.policy.wait(min(failures - 1, 16)))
                continue
            if failures:
                log.warning("MLflow at %s answers again; sending the queued calls", redact_url(self.uri))
            failures = 0
            self._pop()

    def _pop(self) -> None:
        with self.cond:
            self.pending.popleft()

    def close(self, final: dict[str, Any] | None = None) -> int:
        """Deliver what is queued (the server gets `io.retries` more tries if it is away), then `final` (the run's
        terminate call); what is left is spooled for `sync`. Returns the number of spooled calls."""
        if self.thread is not None:
            with self.cond:
                self.closing = True
                self.cond.notify()
            self.thread.join()
        left = list(self.pending)
        if final is not None:
            if left:
                left.append(final)
            else:
                try:
                    deliver(self.client, self.run_id, final)
                except Exception as err:
                    if not transient(err):
                        raise
                    left.append(final)
        if left:
            spool(self.spool_dir, self.uri, self.run_id, left)
            log.warning("MLflow at %s is away: %d tracking call(s) of run %s are kept in %s and are sent by the next "
                        "stage that reaches it (or `python -m desta.tracking`)", redact_url(self.uri),
                        len(left), self.run_id, self.spool_dir)
        return len(left)


def spool(spool_dir: Path, uri: str, run_id: str, ops: list[dict[str, Any]]) -> Path:
    """Append `ops` to the run's spool file; artifact files are copied beside it (they may change later)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"{run_id}.jsonl"
    files = spool_dir / f"{run_id}.files"
    new = not path.exists()
    with path.open("a", encoding="utf-8") as fh:
        if new:
            fh.write(json.dumps({"tracking_uri": uri, "run_id": run_id}) + "\n")
        for op in ops:
            if op["kind"] == "artifact" and Path(op["path"]).exists():
                src = Path(op["path"])
                dest = files / f"{len(list(files.glob('*'))) if files.exists() else 0:04d}" / src.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
                op = {**op, "path": str(dest)}
            fh.write(json.dumps(op, default=str) + "\n")
    return path


def sync(uri: str, policy: RetryPolicy, spool_dir: Path = SPOOL_DIR) -> int:
    """Deliver every spooled run of this tracking URI (oldest first); a run whose calls all went through is
    removed, one that fails keeps its remaining calls. Returns the number of calls delivered."""
    from mlflow import MlflowClient

    if not spool_dir.is_dir():
        return 0
    client, sent = MlflowClient(uri), 0
    for path in sorted(spool_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        lines = path.read_text(encoding="utf-8").splitlines()
        head, ops = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
        if head.get("tracking_uri") != uri:
            continue
        done = 0
        for op in ops:
            try:
                deliver(client, head["run_id"], op)
            except Exception as err:
                if transient(err):
                    break
                log.warning("MLflow refused a spooled %s call of run %s (%s); it is dropped", op["kind"],
                            head["run_id"], describe(err))
            done += 1
        sent += done
        if done == len(ops):
            path.unlink()
            shutil.rmtree(spool_dir / f"{head['run_id']}.files", ignore_errors=True)
            log.info("MLflow: delivered %d spooled call(s) of run %s", done, head["run_id"])
        else:
            body = "".join(json.dumps(op) + "\n" for op in ops[done:])
            path.write_text(json.dumps(head) + "\n" + body, encoding="utf-8")
            return sent  # still away: later runs wait for the next sync
    return sent
