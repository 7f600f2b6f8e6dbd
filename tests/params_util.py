"""The repository's params.yaml (the one place settings have defaults) with a test's own changes merged in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.config import Params, load_params

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def default_params(changes: dict[str, Any] | None = None) -> Params:
    """params.yaml deep-merged with `changes` (nested dict; lists are replaced), validated strictly."""
    return load_params(PARAMS_FILE, merge=changes or {})
