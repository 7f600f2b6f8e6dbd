"""MLflow + S3 helpers: every stage logs into one nested run under the pipeline's parent run.

Nothing happens at import. `stage_run(params, "train")` opens a run (nested under $DESTA_PARENT_RUN_ID when a
pipeline set one), logs the stage's flattened params, and yields a tracker; with `tracking.enabled: false` the
tracker is a silent no-op so stages run the same either way. Embedded default: sqlite:///mlflow.db + ./mlartifacts.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from desta.config import Params, TrackingConfig, flatten

log = logging.getLogger(__name__)

PARENT_ENV = "DESTA_PARENT_RUN_ID"
SECRET_MARKERS = ("secret", "password", "token", "access_key", "api_key", "credential")


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def configure_env(cfg: TrackingConfig) -> None:
    """Offline-safe defaults (telemetry off) and the S3 endpoint for artifacts; credentials stay in the env."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    endpoint = cfg.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)


def safe_params(d: dict[str, Any]) -> dict[str, str]:
    """Flatten and stringify params for MLflow; drop anything that looks like a secret."""
    out = {}
    for k, v in flatten(d).items():
        if any(m in k.lower() for m in SECRET_MARKERS):
            continue
        s = str(v)
        out[k] = s if len(s) <= 6000 else s[:5997] + "..."
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class StageTracker:
    """What a stage logs through; a disabled tracker accepts the same calls and does nothing."""

    def __init__(self, run: Any | None):
        self.run = run
        self.run_id: str | None = run.info.run_id if run is not None else None

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is None:
            return
        import mlflow

        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v is not None}
        mlflow.log_metrics(clean, step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_params(safe_params(params))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run is not None:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run is None or not Path(path).exists():
            return
        import mlflow

        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, d: dict[str, Any], name: str) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_dict(d, name)


@contextmanager
def stage_run(params: Params, stage: str, section: Any | None = None) -> Iterator[StageTracker]:
    """Open the stage's MLflow run (nested under the pipeline's parent when $DESTA_PARENT_RUN_ID is set)."""
    cfg = params.tracking
    if not cfg.enabled:
        yield StageTracker(None)
        return
    import mlflow

    configure_env(cfg)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    ensure_experiment(cfg)
    parent = os.environ.get(PARENT_ENV)
    tags = {"desta.stage": stage}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        tracker = StageTracker(run)
        payload = section.model_dump(mode="json") if section is not None else {}
        tracker.log_params({f"{stage}.{k}": v for k, v in flatten(payload).items()} if payload else {})
        yield tracker


def ensure_experiment(cfg: TrackingConfig) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(cfg.experiment, artifact_location=cfg.artifact_location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def run_register(params: Params) -> dict[str, Any]:
    """Stage `register`: log the trained model as an MLflow pyfunc, register it, move `champion` if it wins."""
    from desta.registry import register_model

    return register_model(params)
