"""Resuming on another number of ranks (desta.train.checkpoint.find_resumable): exact when micro-batch x ranks is
unchanged under plain DDP, refused with the fix named when the batches would be re-cut or the optimizer states are
ZeRO partitions, and a genuine settings change still moves the old checkpoints aside. Launched for real (torchrun,
2 ranks): test_train_multirank.py."""

from __future__ import annotations

import json

import pytest
from params_util import default_params

from desta.train import checkpoint as ckpt


def meta(world: int, micro: int, strategy: str = "torch", lr: float = 3e-4) -> dict:
    train = {"micro_batch_size": micro, "strategy": strategy, "lr": lr}
    dump = default_params({"train": train}).model_dump(mode="json")
    settings = ckpt.trajectory_settings(dump, "data", world)
    return {"settings": settings, "settings_hash": ckpt.settings_hash(settings), "model_hashes": {"frozen": "f"},
            "world_size": world, "strategy": strategy}


def saved(root, m: dict):
    step = root / "step-00000004"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({**m, "step": 4, "format": ckpt.FORMAT}))
    return step


def test_same_global_micro_batch_on_other_ranks_resumes(tmp_path):
    step = saved(tmp_path, meta(world=1, micro=4))
    assert ckpt.find_resumable(tmp_path, meta(world=2, micro=2)) == step
    assert ckpt.find_resumable(tmp_path, meta(world=4, micro=1)) == step


def test_other_global_micro_batch_on_other_ranks_is_refused_naming_the_fix(tmp_path):
    saved(tmp_path, meta(world=1, micro=4))
    with pytest.raises(RuntimeError, match=r"written by 1 rank\(s\) at 4 records .* -S train.micro_batch_size=2"):
        ckpt.find_resumable(tmp_path, meta(world=2, micro=4))
    with pytest.raises(RuntimeError, match="a number of ranks that divides 4"):
        ckpt.find_resumable(tmp_path, meta(world=3, micro=2))
    assert ckpt.list_checkpoints(tmp_path), "a refusal moves nothing"


def test_deepspeed_on_other_ranks_is_refused(tmp_path):
    saved(tmp_path, meta(world=2, micro=2, strategy="deepspeed"))
    with pytest.raises(RuntimeError, match="ZeRO, whose optimizer states are partitioned per rank"):
        ckpt.find_resumable(tmp_path, meta(world=1, micro=4, strategy="deepspeed"))


def test_changed_micro_batch_on_the_same_ranks_or_other_settings_start_fresh(tmp_path):
    for root, now in ((tmp_path / "a", meta(world=1, micro=2)),
                      (tmp_path / "b", meta(world=2, micro=4, lr=1e-4))):  # another job: the lr changed too
        saved(root, meta(world=1, micro=4))
        assert ckpt.find_resumable(root, now) is None
        assert list((root / "stale").glob("*/step-00000004")) and not ckpt.list_checkpoints(root)
