"""The pipeline's stages, listed once: name -> entry function. The CLI, dvc.yaml and the Prefect flow all use
this list (tests/unit/test_stages.py keeps the three equal). Each entry is `fn(params: Params) -> dict` (a summary).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from desta.config import Params

# name -> "module:function"; order is the pipeline order.
STAGES: dict[str, str] = {
    "prepare": "desta.data.prepare:run_prepare",
    "generate": "desta.selfgen.generate:run_generate",
    "validate": "desta.validate.gate:run_validate",
    "train": "desta.train.recipe:run_train",
    "evaluate": "desta.evaluate.run:run_evaluate",
    "register": "desta.registry:run_register",
}


def stage_function(name: str) -> Callable[[Params], dict[str, Any]]:
    """Import a stage's entry function lazily (nothing heavy runs at `import desta`)."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)
