"""Resuming never unpickles code: a checkpoint on shared storage whose optimizer file was replaced by a malicious
pickle is refused (the planted code does not run); the RNG state is JSON; checkpoints of the older pickled format
are set aside instead of being loaded. Run: pytest tests/unit/test_train_checkpoint_safety.py"""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_train_fixtures import make_generated
from test_train_recipe import factory, tiny_params

from desta.train.checkpoint import CheckpointRefused, list_checkpoints
from desta.train.recipe import run_train


class Planted:
    """What an attacker writes: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_tampered_optimizer_file_is_refused_and_its_code_never_runs(tmp_path):
    make_generated(tmp_path, n_train=8, n_valid=4)
    run_train(tiny_params(tmp_path, max_steps=4, save_every=2), factory, stop_after=2)
    ckpt = list_checkpoints(tmp_path / "ckpt")[-1]
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "optim.pt", "rng-rank0.json",
                                                       "trainable.safetensors", "trainer_state.json"]
    torch.save({"optimizer": Planted(tmp_path / "control")}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the pickle is live: an unsafe loader runs it
    assert (tmp_path / "control").exists()

    marker = tmp_path / "pwned"
    torch.save({"optimizer": Planted(marker), "scheduler": {}, "scaler": {}}, ckpt / "optim.pt")
    with pytest.raises(CheckpointRefused, match=r"optim\.pt: refused to load \(.*posix\.system.*\)"):
        run_train(tiny_params(tmp_path, max_steps=4, save_every=2), factory)
    assert not marker.exists(), "the planted code ran"


def test_rng_state_is_json_and_old_pickled_checkpoints_are_set_aside(tmp_path, caplog):
    make_generated(tmp_path, n_train=8, n_valid=4)
    run_train(tiny_params(tmp_path, max_steps=4, save_every=2), factory, stop_after=2)
    ckpt = list_checkpoints(tmp_path / "ckpt")[-1]
    state = json.loads((ckpt / "rng-rank0.json").read_text())
    assert set(state) >= {"python", "numpy", "torch"}
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["format"]  # as written before checkpoints stopped pickling their state
    (ckpt / "meta.json").write_text(json.dumps(meta))
    summary = run_train(tiny_params(tmp_path, max_steps=4, save_every=2), factory)
    assert summary["resumed_from"] is None and "format" in caplog.text
    assert list((tmp_path / "ckpt" / "stale").glob("*/step-00000002"))
