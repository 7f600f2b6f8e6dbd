"""The repository's params.yaml (the one place settings have defaults) with a test's own changes merged in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.config import Params, load_params

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def default_params(changes: dict[str, Any] | None = None) -> Params:
    """params.yaml deep-merged with `changes` (nested dict; lists are replaced), validated strictly."""
    return load_params(PARAMS_FILE, merge=changes or {})


def tracked_params(tmp_path: Path, monkeypatch: Any, experiment: str) -> Params:
    """Default params logging to a fresh SQLite MLflow store in tmp_path (the working directory), with no tracking
    URI or pipeline parent run inherited from the environment."""
    from desta.tracking import PARENT_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    p = default_params()
    p.tracking.tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    p.tracking.experiment = experiment
    return p
