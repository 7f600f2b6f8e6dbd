"""The paper's ablation end to end on the smoke profile (`python -m desta.pipeline ablation`): every arm trains and
is evaluated on the same clips, the table / CSV / JSON / PNG are written, and MLflow holds one parent run with a child
per arm, each child holding that arm's stage runs. The backbones are tiny random models (the plumbing is under test,
not what a 135M model learns in two steps; the measured table on the real default demo is in docs/training.md), and
the other-LLM arm uses a second tiny random instruct LLM."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import make_tiny_llm, make_tiny_whisper

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
# the smoke profile, with an evaluation that still fills every column of the table (one MCQ per attribute, two
# instruction-following items for model and backbone, one retention item)
FAST = ["generate.max_clips=null", "train.max_steps=2", "train.eval_every=2", "train.save_every=2",
        "evaluate.max_items=null", "evaluate.heldout_max_per_attribute=1", "evaluate.heldout_open_questions=false",
        "evaluate.choice_scoring=false", "evaluate.heldout_asr_items=0", "evaluate.heldout_ifeval_items=2",
        "evaluate.retention_items=1"]
ARMS = ["self", "templated", "other-llm"]  # `mix` is the union of the first two (tests/unit/test_selfgen_generate.py)


def test_ablation_arms_table_plot_and_mlflow(tmp_path):
    backbone, other = make_tiny_llm(tmp_path / "llm", seed=1), make_tiny_llm(tmp_path / "other-llm", seed=3)
    encoder = make_tiny_whisper(tmp_path / "whisper")
    work = tmp_path / "ablation"
    cmd = [sys.executable, "-m", "desta.pipeline", "ablation", "--profile", "smoke", "--workdir", str(work),
           "--arms", *ARMS, "--other-llm", str(other),
           *[a for kv in FAST for a in ("-S", kv)],
           "-S", f"model.llm={backbone}", "-S", f"model.encoder={encoder}",
           "-S", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    rows = list(csv.DictReader((work / "ablation.csv").open()))
    assert [r["arm"] for r in rows] == ARMS
    for r in rows:
        assert all(r[k] for k in ("perception_mcq", "if_rate", "backbone_if_rate", "retention", "val_loss",
                                  "step0_val_loss", "audio_gap")), r
    assert rows[0]["if_rate_p_vs_self"] == "" and all(r["if_rate_p_vs_self"] for r in rows[1:])
    assert (work / "ablation.png").stat().st_size > 1000 and "| arm |" in (work / "ablation.md").read_text()
    sources = {arm: {json.loads(line)["target_source"]
                     for p in (work / "arms" / arm / "generated").glob("shard-*.jsonl")
                     for line in p.read_text().splitlines()} for arm in ("self", "templated")}
    assert sources == {"self": {"llm"}, "templated": {"templated"}}
    generators = {json.loads(line)["generator"] for p in (work / "arms" / "other-llm" / "generated").glob("shard-*")
                  for line in p.read_text().splitlines()}
    assert generators == {str(other)}
    assert json.loads((work / "arms" / "self" / "eval" / "metrics.json").read_text())  # same clips per arm
    manifests = list((work / "manifests").glob("manifest-*.parquet"))
    assert manifests and not (work / "arms" / "self" / "manifests").exists()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r for r in runs if r.info.run_name == "ablation")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) >= {"prepare", *(f"arm:{arm}" for arm in ARMS)}
    for arm in ARMS:
        child = children[f"arm:{arm}"]
        assert "if_rate" in child.data.metrics and "val_loss" in child.data.metrics
        stages = sorted(r.data.tags["desta.stage"] for r in runs
                        if r.data.tags.get("mlflow.parentRunId") == child.info.run_id)
        assert stages == ["evaluate", "generate", "train", "validate"], (arm, stages)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "ablation")}
    assert {"ablation/ablation.md", "ablation/ablation.png"} <= artifacts
