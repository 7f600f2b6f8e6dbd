"""Train data pipeline: records -> decoded clips -> batches (corrupt clips skipped and counted), the label mask,
the deterministic resumable length-bucketed sampler, the lr schedule and the generated DeepSpeed config."""

from __future__ import annotations

import json

import pytest
import torch
from params_util import default_params
from test_train_fixtures import TinyAudioLM, make_generated
from test_train_recipe import factory, tiny_params

from desta.data.audio import load_audio
from desta.train.collate import Collator
from desta.train.data import BucketBatchSampler, GeneratedDataset, RecordIndex
from desta.train.deepspeed import build_ds_config
from desta.train.features import EncoderCache
from desta.train.recipe import run_train
from desta.train.schedule import lr_factor


def test_records_split_and_corrupt_clip_is_skipped_and_counted(tmp_path):
    gen = make_generated(tmp_path, n_train=6, n_valid=2, corrupt=1)
    train, valid = RecordIndex.build(gen, "train"), RecordIndex.build(gen, "valid")
    assert len(train) == 6 and len(valid) == 2 and train.fingerprint != valid.fingerprint
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
    ds = GeneratedDataset(RecordIndex.build(make_generated(tmp_path, n_train=2, n_valid=0), "train"))
    batch = Collator(TinyAudioLM().build_inputs)([ds[0], ds[1]])
    ids, labels = batch["inputs"]["input_ids"], batch["inputs"]["labels"]
    for row in range(2):
        kept = labels[row][labels[row] != -100]
        assert bytes(kept.tolist()).decode() == ds[row]["response"]
        assert (ids[row][labels[row] != -100] == kept).all()
    assert batch["n_label_tokens"] == sum(len(ds[i]["response"]) for i in range(2))


def test_bad_record_names_the_shard_and_the_field(tmp_path):
    rec = {"id": "x", "split": "train", "messages": [{"role": "user", "content": "hi"}], "response": "ok"}
    (tmp_path / "shard-00000.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"shard-00000.jsonl: record 'x' has no `audios`"):
        RecordIndex.build(tmp_path, "train")
    (tmp_path / "shard-00000.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"shard-00000.jsonl:1: not valid JSON"):
        RecordIndex.build(tmp_path, "train")


def test_index_holds_positions_not_records_and_reads_them_back(tmp_path):
    """The index keeps 20 bytes per record (shard, offset, size, length estimate), whatever the record's size, and
    reads every record back exactly; records of other splits, blank lines and over-long records are left out."""
    gen = make_generated(tmp_path, n_train=10, n_valid=3)
    big = {**json.loads((gen / "shard-00000.jsonl").read_text().splitlines()[0]), "id": "big",
           "seed_description": "x" * 50_000}
    (gen / "shard-00001.jsonl").write_text("\n" + json.dumps(big) + "\n")
    index = RecordIndex.build(gen, "train")
    assert len(index) == 11 and index.nbytes_held() == 20 * 11
    rows = [json.loads(line) for p in sorted(gen.glob("shard-*.jsonl")) for line in p.read_text().splitlines()
            if line.strip()]
    assert [index.record(i) for i in range(len(index))] == [r for r in rows if r["split"] == "train"]
    assert index.record(10)["seed_description"] == "x" * 50_000
    short = RecordIndex.build(gen, "train", max_len=int(index.lengths.max()) - 1)
    assert short.too_long >= 1 and len(short) + short.too_long == 11
    assert RecordIndex.build(gen, "train").fingerprint == index.fingerprint


def test_untranscribed_clips_are_listed_and_filled_in(tmp_path):
    gen = make_generated(tmp_path, n_train=4, n_valid=0, transcript=None)
    index = RecordIndex.build(gen, "train")
    assert len(index.untranscribed) == 4 and all(p.endswith(".wav") for p in index.untranscribed)
    ds = GeneratedDataset(index, {index.untranscribed[0]: "a tone"})
    texts = [ds[i]["messages"][1]["audios"][0]["text"] for i in range(4)]
    assert sorted(texts, key=str) == sorted(["a tone", None, None, None], key=str)


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


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_each_global_batch_of_one_rank_at_world_times_the_micro_batch(world):
    """N ranks at micro-batch m see exactly the batches one rank sees at N x m, cut in N slices, so the trained
    trajectory depends on the product only (and a resume may change N when m makes up for it)."""
    lengths = [(i * 53) % 97 for i in range(203)]
    one = BucketBatchSampler(lengths, batch_size=8, seed=5, pool=4)
    ranks = [BucketBatchSampler(lengths, 8 // world, 5, pool=4, rank=r, world_size=world) for r in range(world)]
    for s in (one, *ranks):
        s.set_epoch(2, start=3)
    joined = [sum(parts, []) for parts in zip(*(list(r) for r in ranks), strict=True)]
    assert joined == list(one) and len(joined) == 203 // 8 - 3


def test_validation_split_covers_every_record_once_and_no_rank_is_left_empty():
    lengths = list(range(11))  # 2 ranks x 2: global batches of 4, 4, 3
    ranks = [BucketBatchSampler(lengths, 2, 0, shuffle=False, drop_last=False, rank=r, world_size=2) for r in (0, 1)]
    parts = [list(r) for r in ranks]
    assert sorted(i for p in parts for b in p for i in b) == list(range(11))
    assert [len(b) for b in parts[0]] == [2, 2, 2] and [len(b) for b in parts[1]] == [2, 2, 1]
    lengths = list(range(9))  # 4 ranks x 2: the last global batch holds 1 record, fewer than ranks: merged
    ranks = [BucketBatchSampler(lengths, 2, 0, shuffle=False, drop_last=False, rank=r, world_size=4) for r in range(4)]
    parts = [list(r) for r in ranks]
    assert all(len(p) == 1 and p[0] for p in parts) and sorted(i for p in parts for i in p[0]) == list(range(9))


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




def test_s3_clips_load_at_training_time_through_the_ingestion_client(s3_server, tmp_path, monkeypatch):
    """Records whose audio is an s3:// URI (as `desta prepare` writes for an S3 corpus) train: the dataset fetches
    each clip with desta.data.remote's client; a missing object is a skipped clip named by its URI."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    gen = make_generated(tmp_path, n_train=8, n_valid=4)
    client, uri = s3_server.client(), f"s3://{s3_server.bucket}/train-audio"
    for wav in sorted((tmp_path / "audio").glob("*.wav"))[1:]:  # clip000 is never uploaded
        client.put_object(Bucket=s3_server.bucket, Key=f"train-audio/{wav.name}", Body=wav.read_bytes())
    shard = gen / "shard-00000.jsonl"
    shard.write_text(shard.read_text().replace(str(tmp_path / "audio"), uri))
    ds = GeneratedDataset(RecordIndex.build(gen, "train"))
    missing, item = ds[0], ds[1]
    assert missing == {"id": "demo/clip000-p0", "error": "missing", "path": f"{uri}/clip000.wav"}
    local = load_audio(tmp_path / "audio" / "clip001.wav")
    assert (item["messages"][1]["audios"][0]["array"] == local).all()
    summary = run_train(tiny_params(tmp_path, max_steps=2, eval_every=2, save_every=2), factory)
    assert summary["steps"] == 2 and summary["skipped_clips"] >= 1 and summary["final_val_loss"] is not None


class CountingEncoder(torch.nn.Module):
    """encode_audio: features [n, 2, 6] -> states [n, L=2, T=max frames, d=3], a pure function of the features."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode_audio(self, feats, frames):
        self.calls += 1
        t = int(frames.max())
        return feats[:, :, :t].unsqueeze(-1).expand(-1, -1, -1, 3) * 1.5


def test_encoder_cache_stays_within_its_bound_and_changes_no_input():
    """Clips past train.feature_cache_max_mb are encoded each time they come: the cache never grows past the bound,
    and what the model gets is the same fp16 states as with an unbounded cache."""
    feats = torch.arange(4 * 2 * 6, dtype=torch.float32).view(4, 2, 6)
    inputs = {"input_features": feats, "audio_frames": torch.tensor([6, 4, 5, 6]),
              "audio_batch_index": torch.arange(4), "input_ids": torch.zeros(4, 3)}
    keys = ["a.wav", "b.wav", "c.wav", "d.wav"]
    per_clip = 2 * 6 * 3 * 2  # L x frames x d x 2 bytes, for a 6-frame clip
    bounded, free = EncoderCache(CountingEncoder(), max_bytes=per_clip + 1), EncoderCache(CountingEncoder(), 2**30)
    for _ in range(3):
        got, want = bounded.attach(inputs, keys), free.attach(inputs, keys)
        assert torch.equal(got["audio_hidden"], want["audio_hidden"]) and "input_features" not in got
        assert got["audio_hidden"].dtype == torch.float16
    assert list(bounded.store) == ["a.wav"] and bounded.nbytes() == per_clip <= bounded.max_bytes
    assert bounded.model.calls == 3 and free.model.calls == 1 and bounded.uncached == 9
