"""Train data pipeline: records -> decoded clips -> batches (corrupt clips skipped and counted), the label mask,
the deterministic resumable length-bucketed sampler, the lr schedule and the generated DeepSpeed config."""

from __future__ import annotations

import pytest
from params_util import default_params
from test_train_fixtures import TinyAudioLM, make_generated

from desta.train.collate import Collator
from desta.train.data import BucketBatchSampler, GeneratedDataset, read_generated
from desta.train.deepspeed import build_ds_config
from desta.train.schedule import lr_factor


def test_records_split_and_corrupt_clip_is_skipped_and_counted(tmp_path):
    gen = make_generated(tmp_path, n_train=6, n_valid=2, corrupt=1)
    train, valid = read_generated(gen, ["train"]), read_generated(gen, ["valid"])
    assert len(train) == 6 and len(valid) == 2
    ds = GeneratedDataset(train)
    bad, good = ds[0], ds[1]
    assert bad["error"] == "unreadable" and "clip000.wav" in bad["path"]
    audio = good["messages"][1]["audios"][0]["array"]
    assert audio.dtype.name == "float32" and audio.shape == (4800,)
    batch = Collator(TinyAudioLM().build_inputs)([ds[i] for i in range(4)])
    assert batch["n_samples"] == 3 and batch["n_skipped"] == 1 and "clip000.wav" in batch["skipped"][0]
    assert batch["inputs"]["input_features"].shape == (3, 80, 3000)
    assert batch["n_tokens"] == int(batch["inputs"]["attention_mask"].sum())


def test_labels_cover_response_tokens_only(tmp_path):
    ds = GeneratedDataset(read_generated(make_generated(tmp_path, n_train=2, n_valid=0), ["train"]))
    batch = Collator(TinyAudioLM().build_inputs)([ds[0], ds[1]])
    ids, labels = batch["inputs"]["input_ids"], batch["inputs"]["labels"]
    for row in range(2):
        kept = labels[row][labels[row] != -100]
        assert bytes(kept.tolist()).decode() == ds.records[row]["response"]
        assert (ids[row][labels[row] != -100] == kept).all()
    assert batch["n_label_tokens"] == sum(len(r["response"]) for r in ds.records)


def test_bad_record_names_the_field(tmp_path):
    rec = {"id": "x", "messages": [{"role": "user", "content": "hi"}], "response": "ok"}
    with pytest.raises(ValueError, match=r"gen.jsonl: record 'x' has no `audios`"):
        GeneratedDataset([rec], where="gen.jsonl")


def test_sampler_is_deterministic_bucketed_and_resumable():
    lengths = [(i * 37) % 101 for i in range(200)]
    s = BucketBatchSampler(lengths, batch_size=8, seed=3, pool=5)
    s.set_epoch(1)
    first = list(s)
    assert first == list(s) and len(first) == 25
    assert sorted(i for b in first for i in b) == list(range(200))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 30, "batches should hold similar lengths"
    s.set_epoch(2)
    assert list(s) != first, "a new epoch reshuffles"
    s.set_epoch(1, start=10)
    assert list(s) == first[10:] and len(s) == 15
    ranks = [BucketBatchSampler(lengths, 8, 3, pool=5, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(1)
    parts = [list(r) for r in ranks]
    assert len({len(p) for p in parts}) == 1 and not set(map(tuple, parts[0])) & set(map(tuple, parts[1]))


def test_schedule_warmup_then_cosine_to_floor():
    f = [lr_factor(s, warmup_steps=10, max_steps=110, kind="cosine", min_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[110] == pytest.approx(0.1) and f[60] == pytest.approx(0.55)
    assert lr_factor(50, 10, 110, "linear") == pytest.approx(0.6)
    assert lr_factor(500, 10, 110, "constant") == 1.0


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_generated_from_params(stage):
    cfg = default_params().train.model_copy(update=dict(
        strategy="deepspeed", zero_stage=stage, precision="bf16", micro_batch_size=4, grad_accum=8, lr=1e-4,
        warmup_steps=5000, max_steps=100000, offload_optimizer=stage == 3))
    ds = build_ds_config(cfg, world_size=8, on_cpu=False)
    assert ds["train_batch_size"] == 4 * 8 * 8 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["optimizer"]["params"] == {"lr": 1e-4, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.01}
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 5000
    assert ds["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in ds["zero_optimization"]) == (stage == 3)
    cpu = build_ds_config(cfg.model_copy(update={"offload_optimizer": False}), on_cpu=True)
    assert cpu["optimizer"]["params"]["torch_adam"] is True


