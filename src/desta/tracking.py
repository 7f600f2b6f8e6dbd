"""MLflow + S3 helpers: every stage logs into one nested run under the pipeline's parent run.
`python -m desta.tracking` delivers tracking calls kept while the server was away (see below).

Nothing happens at import. `stage_run(params, "train")` opens a run (nested under $DESTA_PARENT_RUN_ID when a
pipeline set one), logs the stage's flattened params, and yields a tracker; with `tracking.enabled: false` the
tracker is a silent no-op so stages run the same either way. Embedded default: sqlite:///mlflow.db + ./mlartifacts.
Each stage run records its inputs as `mlflow.data` datasets whose digests are the DVC hashes from dvc.lock (dataset
lineage), the git commit and the backbone references. `parent_run` opens the pipeline's parent run (used by the
Prefect flow and `python -m desta.pipeline repro`); without one, stage runs are top-level, tagged `desta.stage`.

Outages (params `io:`): reaching the server when a run starts is retried with backoff, then the stage fails in one
line naming the server; once a run is open, every call goes through desta/tracking_outbox.py, so a server that goes
away mid-stage only delays the metrics, and the run is always closed (FINISHED, or FAILED when the stage raised).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from desta.config import IOConfig, Params, TrackingConfig, flatten
from desta.io_retry import RetryPolicy, redact_url, retry

log = logging.getLogger(__name__)

PARENT_ENV = "DESTA_PARENT_RUN_ID"
PIPELINE_ENV = "DESTA_PIPELINE_ID"
# stage -> the `paths` keys it reads (logged as mlflow.data inputs with their DVC hashes)
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "prepare": (), "generate": ("manifests",), "validate": ("manifests", "generated"),
    "train": ("manifests", "generated", "validation"), "evaluate": ("model", "manifests"),
    "register": ("model", "eval"),
}
SECRET_MARKERS = ("secret", "password", "token", "access_key", "api_key", "credential")


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def configure_env(cfg: TrackingConfig, io: IOConfig | None = None) -> None:
    """Offline-safe defaults (telemetry off) and the S3 endpoint for artifacts; credentials stay in the env. With
    `io`, MLflow's own HTTP retries are turned off and its time-out set: `mlflow_call` retries with params `io:`."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    endpoint = cfg.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)
    if io is not None:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(math.ceil(io.timeout_s))


def mlflow_call(fn: Any, what: str, uri: str, policy: RetryPolicy) -> Any:
    """`fn()` against the tracking server, retried on outages; EndpointError (one line) when it stays away."""
    from desta.tracking_outbox import transient

    return retry(fn, what=f"MLflow tracking server {uri}: {what}", policy=policy, transient=transient,
                 hint="Check that the server is up and tracking.tracking_uri / $MLFLOW_TRACKING_URI, or set "
                      "tracking.enabled: false to run without tracking")


def safe_params(d: dict[str, Any]) -> dict[str, str]:
    """Flatten and stringify params for MLflow; drop anything that looks like a secret, redact credentials written
    inside URLs."""
    out = {}
    for k, v in flatten(d).items():
        if any(m in k.lower() for m in SECRET_MARKERS):
            continue
        s = redact_url(str(v))
        out[k] = s if len(s) <= 6000 else s[:5997] + "..."
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class StageTracker:
    """What a stage logs through; a disabled tracker accepts the same calls and does nothing. Calls go through the
    run's outbox (queued while the server is away)."""

    def __init__(self, run: Any | None, outbox: Any | None = None):
        self.run, self.outbox = run, outbox
        self.run_id: str | None = run.info.run_id if run is not None else None
        self.end_status: str | None = None  # how open_run closes the run when the block ends normally (FINISHED)

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def _put(self, op: dict[str, Any]) -> None:
        if self.outbox is not None:
            self.outbox.put(op)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from desta.tracking_outbox import now_ms

        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self._put({"kind": "metrics", "values": clean, "step": step, "ts": now_ms()})

    def log_params(self, params: dict[str, Any]) -> None:
        if params:
            self._put({"kind": "params", "values": safe_params(params)})

    def set_tags(self, tags: dict[str, Any]) -> None:
        if tags:
            self._put({"kind": "tags", "values": {k: redact_url(str(v)) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._put({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def log_dict(self, d: dict[str, Any], name: str) -> None:
        self._put({"kind": "dict", "values": json.loads(json.dumps(d, default=str)), "name": name})


@contextmanager
def stage_run(params: Params, stage: str, section: Any | None = None) -> Iterator[StageTracker]:
    """Open the stage's MLflow run (nested under the pipeline's parent when $DESTA_PARENT_RUN_ID is set)."""
    cfg = params.tracking
    if not cfg.enabled:
        yield StageTracker(None)
        return
    tags = connect(cfg, {"desta.stage": stage}, params.io)
    parent = os.environ.get(PARENT_ENV)
    if os.environ.get(PIPELINE_ENV):
        tags["desta.pipeline_id"] = os.environ[PIPELINE_ENV]
    tags.update({"desta.model.encoder": params.model.encoder, "desta.model.llm": params.model.llm})
    with open_run(params, run_name=stage, tags=tags, nested=bool(parent), parent_run_id=parent or None) as tracker:
        payload = section.model_dump(mode="json") if section is not None else {}
        tracker.log_params({f"{stage}.{k}": v for k, v in flatten(payload).items()} if payload else {})
        uri, policy = tracking_uri(cfg), RetryPolicy.from_config(params.io)
        mlflow_call(lambda: log_lineage(params, stage), "log dataset lineage", uri, policy)
        yield tracker


@contextmanager
def open_run(params: Params, **start: Any) -> Iterator[StageTracker]:
    """Start an MLflow run (retried while the server is away) with an outbox for its calls; on exit the outbox is
    drained and the run closed FINISHED, or FAILED when the body raised (spooled when the server is away)."""
    import mlflow

    from desta.tracking_outbox import Outbox, now_ms

    uri, policy = tracking_uri(params.tracking), RetryPolicy.from_config(params.io)
    what = f"start run {start.get('run_name') or start.get('run_id')!r}"
    run = mlflow_call(lambda: mlflow.start_run(**start), what, uri, policy)
    outbox = Outbox(uri, run.info.run_id, policy, background=uri.startswith(("http://", "https://")))
    tracker, status = StageTracker(run, outbox), "FAILED"
    try:
        yield tracker
        status = tracker.end_status or "FINISHED"
    finally:
        _detach(run.info.run_id)
        outbox.close({"kind": "terminate", "status": status, "end_time": now_ms()})


def _detach(run_id: str) -> None:
    """Take the run off MLflow's active-run stack without a server call (the outbox sends its final status)."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
        fluent.MLFLOW_RUN_ID.unset()


def connect(cfg: TrackingConfig, tags: dict[str, str], io: IOConfig | None = None) -> dict[str, str]:
    """Point MLflow at the configured server and experiment (credentials/endpoint env, tracking URI, experiment
    created if missing; retried with params `io:`, then one-line EndpointError) and deliver calls spooled during an
    earlier outage; returns `tags` plus the git commit when there is one, for the run about to start."""
    import mlflow

    from desta.tracking_outbox import sync

    configure_env(cfg, io)
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    if io is None:
        ensure_experiment(cfg)
    else:
        policy = RetryPolicy.from_config(io)
        mlflow_call(lambda: ensure_experiment(cfg), f"open experiment {cfg.experiment!r}", uri, policy)
        sync(uri, policy)
    commit = git_commit()
    return {**tags, "mlflow.source.git.commit": commit} if commit else dict(tags)


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on training runs, not GenAI


def ensure_experiment(cfg: TrackingConfig) -> str:
    """The configured experiment (created if missing) as a model-training experiment; returns its id."""
    import mlflow

    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        exp_id = create_experiment_once(cfg)
    else:
        exp_id = exp.experiment_id
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:
                mlflow.MlflowClient().set_experiment_tag(exp_id, key, value)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def create_experiment_once(cfg: TrackingConfig) -> str:
    """Create the experiment; when another process created it since we looked (two jobs starting together), use
    theirs instead of failing with RESOURCE_ALREADY_EXISTS."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=cfg.artifact_location,
                                        tags=EXPERIMENT_KIND)
    except MlflowException as err:
        exp = mlflow.get_experiment_by_name(cfg.experiment)
        if err.error_code != "RESOURCE_ALREADY_EXISTS" or exp is None:
            raise
        return exp.experiment_id


# ----------------------------------------------------------------------------------------------- multi-rank jobs
RUN_FILE = "mlflow_run.json"  # in a job's state dir (train: paths.checkpoints) while the job is not complete


@contextmanager
def job_run(params: Params, stage: str, section: Any, state_dir: str | Path, is_main: bool, resumed: bool,
            complete: Callable[[], bool]) -> Iterator[StageTracker]:
    """One MLflow run per job, however many ranks and launches it takes (`desta train` under torchrun/deepspeed).

    Only the main rank talks to MLflow, so the experiment and the run are created once and ranks never race; the
    other ranks get a no-op tracker. While the job is not complete its run id is kept in <state_dir>/mlflow_run.json:
    a later launch that continues the job from a checkpoint (`resumed`) continues that run, one that starts over
    closes it (KILLED) first, so a launch killed with SIGKILL leaves no run RUNNING once the job is relaunched.
    When the block ends with complete() false (stopped early) the run ends KILLED and stays continuable; when
    complete, it ends FINISHED and the file is removed. An exception ends it FAILED (continuable too)."""
    if not is_main or not params.tracking.enabled:
        yield StageTracker(None)
        return
    run_file = Path(state_dir) / RUN_FILE
    previous = previous_job_run(params, run_file, resumed)
    with (continued_run(params, stage, section, previous) if previous else stage_run(params, stage, section)) as t:
        if previous is None:
            run_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = run_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run_id": t.run_id, "stage": stage}))
            tmp.replace(run_file)
        yield t
        if not complete():
            t.end_status = "KILLED"
            return
    run_file.unlink(missing_ok=True)


def previous_job_run(params: Params, run_file: Path, resumed: bool) -> str | None:
    """The run to continue (the job resumed and its run is in this experiment), else None after closing an
    orphan: a run the file names that is still RUNNING because its launch was killed."""
    if not run_file.is_file():
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = json.loads(run_file.read_text())["run_id"]
    connect(params.tracking, {}, params.io)
    uri, policy = tracking_uri(params.tracking), RetryPolicy.from_config(params.io)
    try:
        run = mlflow_call(lambda: mlflow.MlflowClient().get_run(run_id), f"read run {run_id}", uri, policy)
    except MlflowException:
        log.warning("%s names MLflow run %s, which this tracking server does not have; starting a new run",
                    run_file, run_id)
        return None
    exp = mlflow.get_experiment_by_name(params.tracking.experiment)
    if resumed and run.info.lifecycle_stage == "active" and exp and run.info.experiment_id == exp.experiment_id:
        return run_id
    if run.info.status == "RUNNING":
        mlflow_call(lambda: mlflow.MlflowClient().set_terminated(run_id, "KILLED"), f"close run {run_id}", uri, policy)
        log.warning("MLflow run %s was left RUNNING by a killed launch and this one starts over: closed it as KILLED",
                    run_id)
    return None


@contextmanager
def continued_run(params: Params, stage: str, section: Any, run_id: str) -> Iterator[StageTracker]:
    """Reopen a job's run (status RUNNING again) for the launch that continues the job. Params are immutable in
    MLflow: keys logged by an earlier launch keep their first value (a changed one is recorded as a tag)."""
    import mlflow

    connect(params.tracking, {}, params.io)
    with open_run(params, run_id=run_id, nested=mlflow.active_run() is not None) as tracker:
        logged = tracker.run.data.params
        payload = safe_params({f"{stage}.{k}": v for k, v in flatten(section.model_dump(mode="json")).items()})
        tracker.log_params({k: v for k, v in payload.items() if k not in logged})
        launches = int(tracker.run.data.tags.get("desta.launches", "1")) + 1
        tracker.set_tags({"desta.launches": launches, **{f"desta.launch{launches}.{k}": v for k, v in payload.items()
                                                         if k in logged and logged[k] != v}})
        yield tracker


# --------------------------------------------------------------------------------------------------------- lineage
def dvc_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Every out recorded in dvc.lock -> its DVC md5 (directories end in `.dir`); {} without a lock file."""
    import yaml

    lock = Path(lock_path)
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    out: dict[str, str] = {}
    for stage in (data.get("stages") or {}).values():
        for item in stage.get("outs", []) + stage.get("deps", []):
            if item.get("md5"):
                out[str(Path(item["path"]))] = item["md5"]
    return out


def quick_digest(path: str | Path) -> str:
    """Digest of a file or directory from names, sizes and (for files < 1 MiB) contents; used when DVC has no hash."""
    path = Path(path)
    h = hashlib.md5(usedforsecurity=False)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}".encode())
        if size < 1 << 20:
            h.update(f.read_bytes())
    return h.hexdigest()


def log_lineage(params: Params, stage: str, lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Log the stage's input folders as mlflow.data datasets (digest = DVC hash, else a quick digest)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    hashes, logged = dvc_hashes(lock_path), {}
    for key in STAGE_INPUTS.get(stage, ()):
        path = Path(getattr(params.paths, key))
        if not path.exists():
            continue
        digest = hashes.get(str(path)) or quick_digest(path)
        with warnings.catch_warnings():  # a local path matches two registered local-artifact sources: same class
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path.resolve()))
        dataset = MetaDataset(source, name=key, digest=digest[:36])
        mlflow.log_input(dataset, context=stage, tags={"dvc_md5": digest, "path": str(path)})
        logged[key] = digest
    if logged:
        mlflow.set_tags({f"desta.dvc.{k}": v for k, v in logged.items()})
    return logged


# ----------------------------------------------------------------------------------------------------- parent run
@contextmanager
def parent_run(params: Params, name: str = "pipeline", tags: dict[str, str] | None = None) -> Iterator[StageTracker]:
    """The pipeline's parent run: exports $DESTA_PARENT_RUN_ID so every stage_run in this process (and in child
    processes such as `dvc repro`) nests under it; restores the environment afterwards."""
    cfg = params.tracking
    if not cfg.enabled:
        yield StageTracker(None)
        return
    all_tags = connect(cfg, {"desta.pipeline": name, **(tags or {})}, params.io)
    saved = {k: os.environ.get(k) for k in (PARENT_ENV, PIPELINE_ENV)}
    with open_run(params, run_name=name, tags=all_tags) as tracker:
        os.environ[PARENT_ENV] = os.environ[PIPELINE_ENV] = tracker.run_id
        tracker.log_params(params.model_dump(mode="json", by_alias=True))
        try:
            yield tracker
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@contextmanager
def child_run(params: Params, name: str, tags: dict[str, str] | None = None) -> Iterator[StageTracker]:
    """A run nested under the current pipeline parent ($DESTA_PARENT_RUN_ID), e.g. one arm of the ablation; stage
    runs opened inside nest under it when the caller points $DESTA_PARENT_RUN_ID at it."""
    cfg = params.tracking
    if not cfg.enabled:
        yield StageTracker(None)
        return
    all_tags = connect(cfg, dict(tags or {}), params.io)
    parent = os.environ.get(PARENT_ENV)
    with open_run(params, run_name=name, tags=all_tags, nested=bool(parent), parent_run_id=parent or None) as tracker:
        yield tracker


def log_pipeline_outputs(params: Params, tracker: StageTracker, lock_path: str | Path = "dvc.lock") -> None:
    """Parent-run summary: the eval metrics, dvc.lock (every DVC hash) and the validation report."""
    if not tracker.enabled:
        return
    metrics_file = Path(params.paths.eval) / "metrics.json"
    if metrics_file.is_file():
        tracker.log_metrics(numeric_metrics(json.loads(metrics_file.read_text())))
    tracker.log_artifact(lock_path, "pipeline")
    tracker.log_artifact(Path(params.paths.validation) / "report.json", "pipeline")
    tracker.set_tags({f"desta.dvc.{Path(k).name}": v for k, v in dvc_hashes(lock_path).items()})


def numeric_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics.json -> {"heldout/accuracy": 0.4, ...}: numbers only, keys joined with '/'."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(numeric_metrics(v, key + "/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def run_url(params: Params, run_id: str | None) -> str | None:
    """Link to a run in the MLflow UI when the tracking URI is a server (None for the embedded store)."""
    uri = tracking_uri(params.tracking)
    if not run_id or not uri.startswith("http"):
        return None
    import mlflow

    from desta.tracking_outbox import transient

    mlflow.set_tracking_uri(uri)
    try:
        run = mlflow.get_run(run_id)
    except Exception as err:
        if transient(err):  # the server is away: no link, the run is still recorded
            return None
        raise
    return f"{redact_url(uri).rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def main(argv: list[str] | None = None) -> int:
    """`python -m desta.tracking [-p params.yaml]`: deliver the tracking calls kept while MLflow was away."""
    import argparse

    from desta.config import load_params
    from desta.tracking_outbox import SPOOL_DIR, sync

    ap = argparse.ArgumentParser(description="deliver tracking calls kept while the MLflow server was away")
    ap.add_argument("-p", "--params", default="params.yaml")
    params = load_params(ap.parse_args(argv).params)
    configure_env(params.tracking, params.io)
    uri = tracking_uri(params.tracking)
    sent = sync(uri, RetryPolicy.from_config(params.io))
    left = len(list(SPOOL_DIR.glob("*.jsonl"))) if SPOOL_DIR.is_dir() else 0
    print(f"delivered {sent} call(s) to {redact_url(uri)}; {left} run(s) still waiting in {SPOOL_DIR}")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
