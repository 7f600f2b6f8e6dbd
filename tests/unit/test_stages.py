"""One name per stage everywhere: STAGES == CLI sub-commands == dvc.yaml stages == Prefect flow tasks; dvc.yaml
declares every output-affecting key of each stage's params section and interpolates paths from params.yaml."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from desta.config import flatten, load_params
from desta.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
# keys that cannot change a stage's outputs, deliberately not declared in dvc.yaml (editing them re-runs nothing)
NOT_DECLARED = {"prepare.workers", "prepare.ray_address", "generate.workers", "generate.ray_address",
                "generate.ray_cpus_per_worker", "generate.progress", "train.progress", "train.log_every",
                "train.num_workers", "train.feature_cache", "train.feature_cache_max_mb",
                # retries and time-outs of remote calls: an outage fails the stage, it never changes what is written
                "io.retries", "io.backoff_s", "io.max_wait_s", "io.timeout_s", "io.judge_timeout_s"}
# stage -> params sections all of whose keys it must declare
SECTIONS = {"prepare": ["prepare", "io"], "generate": ["generate"], "validate": ["validate"],
            "train": ["train", "model"], "evaluate": ["evaluate", "io"], "register": ["io"]}


def _flow_module():
    path = ROOT / "flows" / "retrain.py"
    spec = importlib.util.spec_from_file_location("desta_flow_retrain", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_stage_lists_are_equal():
    """dvc.yaml and the Prefect flow are written independently of STAGES; the CLI side is tests/unit/test_cli.py."""
    assert list(DVC["stages"]) == list(STAGES)
    assert list(_flow_module().STAGE_TASKS) == list(STAGES)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_output_affecting_key_is_declared(stage):
    declared = set(DVC["stages"][stage].get("params", []))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    leaves = {k for section in SECTIONS[stage] for k in flatten({section: raw[section]})}
    # a declared parent (e.g. prepare.quality, model.lora, evaluate.judge) covers its children
    missing = {k for k in leaves - NOT_DECLARED if not any(k == d or k.startswith(d + ".") for d in declared)}
    assert not missing, f"dvc.yaml stage {stage}: declare these params (or list them in NOT_DECLARED): {missing}"
    for key in declared:  # every declared key exists in params.yaml (a typo would silently never re-run)
        node = raw
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml {stage}: params key {key} not in params.yaml"
            node = node[part]


def test_paths_are_interpolated_not_hard_coded():
    params = load_params(ROOT / "params.yaml")
    text = (ROOT / "dvc.yaml").read_text()
    for key, value in params.paths.model_dump().items():
        if value and key != "model_cache":
            assert f" {value}" not in text and f"{value}/" not in text, f"dvc.yaml hard-codes paths.{key}={value}"
    assert "${paths.manifests}" in text and "${paths.eval}/metrics.json" in text


def test_metrics_and_plots_declared():
    evaluate = DVC["stages"]["evaluate"]
    assert evaluate["metrics"] == [{"${paths.eval}/metrics.json": {"cache": False}}]
    plot_files = {f for p in DVC["plots"] for spec in p.values() for f in spec["y"]}
    assert {"${paths.model}/loss.csv", "${paths.eval}/plots/accuracy_by_slice.csv"} <= plot_files
    assert all(s["cmd"] == f"desta {name}" for name, s in DVC["stages"].items())
