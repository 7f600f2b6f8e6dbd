"""`desta train` recipe on a tiny model: it learns, writes model + metrics + loss.csv + checkpoints, resumes
exactly (same losses as an uninterrupted run) and refuses to resume from checkpoints of different settings."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from params_util import default_params
from safetensors.torch import load_file
from test_train_fixtures import TinyAudioLM, make_generated

from desta.train.checkpoint import list_checkpoints
from desta.train.recipe import rotate_audio, run_train


def tiny_params(root, **train):
    base = {"max_steps": 8, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_every": 4, "save_every": 4,
            "log_every": 2, "progress": False, "seed": 1}
    return default_params({
        "paths": {"generated": str(root / "generated"), "checkpoints": str(root / "ckpt"),
                  "model": str(root / "model"), "manifests": str(root / "manifests")},
        "tracking": {"enabled": False}, "train": {**base, **train}})


def factory(params):
    return TinyAudioLM(seed=params.train.seed)


def losses(summary_dir):
    rows = list(csv.DictReader((summary_dir / "loss.csv").open()))
    return [(int(r["step"]), r["train_loss"], r["val_loss"]) for r in rows]


def test_train_writes_outputs_and_lowers_val_loss(tmp_path):
    make_generated(tmp_path, corrupt=1)
    summary = run_train(tiny_params(tmp_path, max_steps=12, eval_every=6, save_every=6), factory)
    assert summary["steps"] == 12 and summary["skipped_clips"] >= 1
    assert summary["final_val_loss"] < summary["step0_val_loss"]
    assert summary["samples_per_s"] > 0 and summary["tokens_per_s"] > 0
    # validation also scores each response against another clip's audio (train.val_shuffled_audio)
    assert summary["step0_audio_gap"] is not None and summary["final_audio_gap"] is not None
    model = tmp_path / "model"
    saved = torch.load(model / "connector.pt", weights_only=True)
    assert saved and all(k.startswith("connector.") for k in saved), "only trainable tensors are saved"
    written = json.loads((model / "train_metrics.json").read_text())
    assert written["steps"] == 12 and written["final_val_loss"] == summary["final_val_loss"]
    assert "samples_per_s" not in written, "wall-clock figures would make the DVC output differ between runs"
    rows = losses(model)
    assert rows[0][0] == 0 and rows[0][2] and len(rows) == 13
    shuffled = [r["val_loss_shuffled_audio"] for r in csv.DictReader((model / "loss.csv").open())]
    assert [bool(v) for v in shuffled] == [bool(r[2]) for r in rows]  # measured wherever val_loss is
    ckpts = list_checkpoints(tmp_path / "ckpt")
    assert [c.name for c in ckpts] == ["step-00000006", "step-00000012"]
    trainable = load_file(ckpts[-1] / "trainable.safetensors")
    assert set(trainable) == set(saved)
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["settings_hash"] and meta["model_hashes"]["frozen"] and meta["settings"]["train"]["lr"] == 3e-3


def test_interrupted_run_resumes_to_identical_losses(tmp_path):
    make_generated(tmp_path, n_train=20)  # 5 batches per epoch: the resume point falls mid-epoch 1
    full = tmp_path / "full"
    full.mkdir()
    (full / "generated").symlink_to(tmp_path / "generated")
    run_train(tiny_params(full), factory)
    run_train(tiny_params(tmp_path), factory, stop_after=4)
    assert [c.name for c in list_checkpoints(tmp_path / "ckpt")] == ["step-00000004"]
    summary = run_train(tiny_params(tmp_path), factory)
    assert summary["resumed_from"].endswith("step-00000004") and summary["steps"] == 8
    assert summary["samples_per_s"] > 0, "the speed of the resumed steps"
    assert losses(tmp_path / "model") == losses(full / "model")
    # same bytes as the uninterrupted run's last checkpoint: no clock in it (its DVC hash is reproducible)
    ours, theirs = tmp_path / "ckpt" / "step-00000008", full / "ckpt" / "step-00000008"
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names and "trainer_state.json" in names
    assert [n for n in names if (ours / n).read_bytes() != (theirs / n).read_bytes()] == []


def test_changed_settings_start_fresh_and_keep_old_checkpoints(tmp_path, caplog):
    make_generated(tmp_path, n_train=8, n_valid=4)
    run_train(tiny_params(tmp_path, max_steps=4), factory)
    summary = run_train(tiny_params(tmp_path, max_steps=4, lr=1e-3), factory)
    assert summary["resumed_from"] is None
    assert "train.lr" in caplog.text
    assert list((tmp_path / "ckpt" / "stale").glob("*/step-00000004/meta.json"))


def test_too_little_data_is_a_clear_error(tmp_path):
    make_generated(tmp_path, n_train=2, n_valid=1)
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        run_train(tiny_params(tmp_path), factory)


def test_rotate_audio_gives_each_record_the_next_records_audio():
    inputs = {"input_ids": torch.arange(6).view(3, 2), "audio_hidden": torch.arange(3.0).view(3, 1, 1, 1),
              "audio_frames": torch.tensor([5, 6, 7]), "audio_batch_index": torch.tensor([0, 1, 2]),
              "audio_positions": torch.tensor([1, 1, 1])}
    out = rotate_audio(inputs)
    assert out["audio_hidden"].flatten().tolist() == [1.0, 2.0, 0.0] and out["audio_frames"].tolist() == [6, 7, 5]
    for key in ("input_ids", "audio_batch_index", "audio_positions"):
        assert torch.equal(out[key], inputs[key])
    assert rotate_audio({**inputs, "audio_hidden": inputs["audio_hidden"][:1], "audio_frames": torch.tensor([5])}) \
        is None  # one window: nothing to swap with
    assert rotate_audio({"input_ids": inputs["input_ids"]}) is None  # text only


def test_val_shuffled_audio_can_be_switched_off(tmp_path):
    make_generated(tmp_path)
    summary = run_train(tiny_params(tmp_path, max_steps=2, eval_every=2, save_every=2, val_shuffled_audio=False),
                        factory)
    assert summary["final_audio_gap"] is None and summary["final_val_loss"] is not None


def test_deterministic_switches_kernels_on_for_the_run_only_and_changes_nothing_on_cpu(tmp_path):
    make_generated(tmp_path, n_train=8, n_valid=4)
    seen = []

    def recording_factory(params):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return factory(params)

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "generated").symlink_to(tmp_path / "generated")
    run_train(tiny_params(plain, max_steps=4), recording_factory)
    run_train(tiny_params(tmp_path, max_steps=4, deterministic=True), recording_factory)
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    assert losses(tmp_path / "model") == losses(plain / "model")
