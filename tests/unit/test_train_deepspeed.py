"""DeepSpeed ZeRO-2 and ZeRO-3 through the same recipe, single process on CPU (gloo, torch AdamW): trains, saves a
checkpoint holding only trainable tensors, and resumes to the same losses as the uninterrupted run.
The first DeepSpeed run on a machine JIT-compiles shm_comm (~30 s, cached in ~/.cache/torch_extensions)."""

from __future__ import annotations

import socket

import pytest
from test_train_fixtures import make_generated
from test_train_recipe import factory, losses, tiny_params

from desta.train.checkpoint import list_checkpoints
from desta.train.recipe import run_train

pytestmark = pytest.mark.slow


@pytest.fixture
def single_rank(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "DS_ACCELERATOR": "cpu"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_saves_trainable_only_and_resumes(tmp_path, single_rank, stage):
    make_generated(tmp_path, n_train=16, n_valid=4)
    ds = {"strategy": "deepspeed", "zero_stage": stage, "max_steps": 4, "save_every": 2, "eval_every": 2}
    full = tmp_path / "full"
    full.mkdir()
    (full / "generated").symlink_to(tmp_path / "generated")
    whole = run_train(tiny_params(full, **ds), factory)
    assert whole["steps"] == 4 and whole["final_val_loss"] < whole["step0_val_loss"]
    run_train(tiny_params(tmp_path, **ds), factory, stop_after=2)
    ckpt = list_checkpoints(tmp_path / "ckpt")[-1]
    states = list((ckpt / "ds").glob("*model_states.pt"))
    assert states, f"no DeepSpeed model states in {ckpt}"
    import torch

    module = torch.load(states[0], weights_only=False)["module"]
    assert module and all(k.startswith("connector.") for k in module), "frozen tensors leaked into the checkpoint"
    resumed = run_train(tiny_params(tmp_path, **ds), factory)
    assert resumed["resumed_from"].endswith("step-00000002")
    assert losses(tmp_path / "model") == losses(full / "model")


def test_zero2_resume_refuses_a_tampered_checkpoint(tmp_path, single_rank):
    """DeepSpeed's own loader unpickles anything; desta swaps in torch.load(weights_only=True) + an allow-list."""
    import torch
    from test_train_checkpoint_safety import Planted

    from desta.train.checkpoint import CheckpointRefused

    make_generated(tmp_path, n_train=16, n_valid=4)
    ds = {"strategy": "deepspeed", "zero_stage": 2, "max_steps": 4, "save_every": 2, "eval_every": 2}
    run_train(tiny_params(tmp_path, **ds), factory, stop_after=2)
    ckpt = list_checkpoints(tmp_path / "ckpt")[-1]
    assert (ckpt / "trainable.safetensors").is_file() and (ckpt / "rng-rank0.json").is_file()
    optim = next((ckpt / "ds").glob("*optim_states.pt"))
    state = torch.load(optim, weights_only=False)
    state["optimizer_state_dict"]["planted"] = Planted(tmp_path / "pwned")
    torch.save(state, optim)
    with pytest.raises(CheckpointRefused, match="optim_states.pt: refused to load"):
        run_train(tiny_params(tmp_path, **ds), factory)
    assert not (tmp_path / "pwned").exists(), "the planted code ran"


@pytest.mark.parametrize(("raw", "want"), [
    ("9.0a", "9.0"),                  # the H100 image's value that broke FusedAdam's JIT build
    ("8.0;9.0a 10.0f+PTX", "8.0;9.0;10.0+PTX"),
    ("9.0;9.0a", "9.0"),              # duplicates collapse
    ("7.5;8.6+PTX", "7.5;8.6+PTX"),   # already numeric: untouched
])
def test_jit_arch_list_drops_arch_specific_suffixes(raw, want):
    from desta.train.deepspeed import _jit_safe_arch_list

    env = {"TORCH_CUDA_ARCH_LIST": raw}
    _jit_safe_arch_list(env)
    assert env["TORCH_CUDA_ARCH_LIST"] == want
    parts = env["TORCH_CUDA_ARCH_LIST"].split(";")  # what DeepSpeed's builder does with it
    assert all(int(x) >= 0 for cc in parts for x in cc.split("+")[0].split("."))


def test_jit_arch_list_absent_stays_absent():
    from desta.train.deepspeed import _jit_safe_arch_list

    env: dict[str, str] = {}
    _jit_safe_arch_list(env)
    assert "TORCH_CUDA_ARCH_LIST" not in env
