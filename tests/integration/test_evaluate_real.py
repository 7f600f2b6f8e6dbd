"""`desta evaluate` end to end with the real small offline models (whisper-tiny.en + SmolLM2-135M, untrained
connector) on a few rendered demo clips; MLflow on a local sqlite file; then `--compare` by run id and by dir."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from params_util import default_params

from desta.data import demo
from desta.data.manifest import Clip, write_shard
from desta.evaluate.compare import compare_runs
from desta.evaluate.run import run_evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tiny_manifest(root: Path, per_kind: int = 1) -> Path:
    """Render the first test-split specs of each kind of the demo corpus (the mixtures: voices of the other gender
    first, so that the gender question has two options) and write them as a manifest."""
    specs = [s for s in demo.plan(120, seed=0) if s["split"] == "test"]
    chosen = [s for kind in ("speech", "sound", "music") for s in [x for x in specs if x["kind"] == kind][:per_kind]]
    genders = {s["voice"]["gender"] for s in chosen if s["kind"] == "speech"}
    mixtures = sorted((x for x in specs if x["kind"] == "mixture"), key=lambda x: x["voice"]["gender"] in genders)
    chosen += mixtures[:per_kind]
    clips = []
    for spec in chosen:
        wave, meta = demo.render(spec)
        path = root / "raw" / spec["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, demo.SAMPLE_RATE, subtype="PCM_16")
        meta = {k: v for k, v in meta.items() if k != "caption"}
        clips.append(Clip(id=f"demo/{spec['file'][:-4]}", audio=str(path), duration=wave.size / demo.SAMPLE_RATE,
                          sample_rate=demo.SAMPLE_RATE, channels=1, source="demo", split="test", **meta))
    write_shard(clips, root / "manifests" / "manifest-00000.parquet")
    return root / "manifests"


def test_evaluate_real_models_then_compare(tmp_path):
    manifests = _tiny_manifest(tmp_path)
    params = default_params({
        "paths": {"manifests": str(manifests), "eval": str(tmp_path / "eval"), "model": str(tmp_path / "no-model")},
        "evaluate": {"tasks": ["heldout", "retention"], "batch_size": 4,
                     "max_new_tokens": {"heldout": 16, "retention": 16}, "heldout_max_per_attribute": 1,
                     "heldout_asr_items": 1, "heldout_ifeval_items": 1,
                     "retention_items": 2},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "eval-test"},
    })
    summary = run_evaluate(params)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("heldout/accuracy", "heldout/chance", "heldout/gender/accuracy", "heldout/wer",
                "heldout/ifeval_following_rate", "retention/ifeval_following_rate",
                "retention/backbone_following_rate"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["heldout/accuracy"] <= 1.0
    preds = (tmp_path / "eval" / "predictions" / "heldout.jsonl").read_text().splitlines()
    kinds = Counter((json.loads(p)["reference"]["kind"], json.loads(p)["runner"]) for p in preds)
    assert kinds["mcq", "model"] == metrics["heldout/n_items"] and kinds["asr", "model"] == 1
    assert kinds["ifeval", "model"] == kinds["ifeval", "backbone"] == 1  # the backbone answers from the description
    kinds = Counter(kind for kind, runner in kinds.elements() if runner == "model")
    assert 0 < kinds["open"] <= kinds["mcq"] and 0 <= metrics["heldout/open_accuracy"] <= 1  # no open music key
    assert 0 < metrics["heldout/accuracy_p"] <= 1 and 0 < metrics["heldout/open_accuracy_p"] <= 1
    assert all(isinstance(json.loads(p)["prediction"], str) for p in preds)
    assert (tmp_path / "eval" / "plots" / "accuracy_by_slice.csv").is_file()
    assert summary["run_id"]

    out = compare_runs(params, [summary["run_id"], str(tmp_path / "eval")], out_dir=str(tmp_path / "cmp"))
    table = Path(out["table"]).read_text()
    value = f"{metrics['heldout/accuracy']:.4f}"
    assert f"| heldout/accuracy | {value} | {value} |" in table
