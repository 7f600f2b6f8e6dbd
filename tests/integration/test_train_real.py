"""`desta train` with the real small offline models (whisper-tiny.en + SmolLM2-135M-Instruct) on a few tone clips:
the loss drops, the saved model reloads with the trained connector, and an interrupted run resumes to the same
losses. Needs the converted models (desta models fetch ...); about a minute on 2 idle cores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from params_util import default_params
from test_train_fixtures import make_generated  # noqa: E402

from desta.train.recipe import run_train  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def real_params(root: Path):
    return default_params({
        "paths": {"generated": str(root / "generated"), "checkpoints": str(root / "ckpt"),
                  "model": str(root / "model")},
        "model": {"qformer_layers": 1, "prompt_size": 8},
        "tracking": {"enabled": False},
        "train": {"max_steps": 4, "micro_batch_size": 2, "lr": 2e-3, "warmup_steps": 1, "eval_every": 2,
                  "save_every": 2, "progress": False}})


def test_real_models_learn_save_and_resume(tmp_path):
    make_generated(tmp_path, n_train=8, n_valid=2, transcript="")
    full = tmp_path / "full"
    full.mkdir()
    (full / "generated").symlink_to(tmp_path / "generated")
    whole = run_train(real_params(full))
    assert whole["final_val_loss"] < whole["step0_val_loss"]
    assert whole["trainable_params"] < whole["frozen_params"] / 10

    from desta.models.audio_llm import DeSTA25AudioModel

    reloaded = DeSTA25AudioModel.from_pretrained(full / "model")
    ckpt_dir = full / "ckpt" / "step-00000004"
    from_ckpt = DeSTA25AudioModel.from_pretrained(ckpt_dir)  # a checkpoint is a model dir (chat --model-dir)
    ckpt = load_file(ckpt_dir / "trainable.safetensors")
    for name, value in reloaded.trainable_state_dict().items():
        assert torch.equal(value.detach(), ckpt[name]), name
        assert torch.equal(value.detach(), from_ckpt.trainable_state_dict()[name]), name

    run_train(real_params(tmp_path), stop_after=2)
    resumed = run_train(real_params(tmp_path))
    assert resumed["resumed_from"].endswith("step-00000002")
    assert (tmp_path / "model" / "loss.csv").read_text() == (full / "model" / "loss.csv").read_text()
