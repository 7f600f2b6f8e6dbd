"""The generation engine on a tiny random Llama: record format, resume/idempotence, generator check, batching.
(SIGKILL and worker-count runs spawn processes: tests/integration/test_generate_real.py.)"""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from params_util import default_params
from tiny_models import make_tiny_llm

from desta.conversation import TRAIN_SYSTEM_PROMPT
from desta.data.manifest import Clip, write_shard
from desta.records import read_records
from desta.selfgen.engine import Decoding, HFEngine, length_buckets
from desta.selfgen.generate import GeneratorMismatch, run_generate
from desta.selfgen.shards import resume_partial


def make_manifest(root: Path, n: int) -> Path:
    clips = []
    for i in range(n):
        wav = root / "audio" / f"c{i:03d}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, np.zeros(1600, dtype="float32"), 16000)
        domain = ("speech", "sound", "music")[i % 3]
        extra = {"transcript": f"hello number {i}", "gender": "female"} if domain == "speech" else \
            {"sound_labels": ["rain"]} if domain == "sound" else {"music_genre": "jazz"}
        clips.append(Clip(id=f"demo/c{i:03d}", audio=str(wav), duration=1.0 + i % 4, sample_rate=16000, channels=1,
                          source="demo", domain=domain, split=("train", "train", "valid", "test")[i % 4],
                          content_hash=f"h{i}", license="CC0", **extra))
    write_shard(clips, root / "manifests" / "manifest-00000.parquet")
    return root / "manifests"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("selfgen")
    return make_tiny_llm(root / "llm"), make_manifest(root, 12)


def params_for(tmp_path: Path, llm: Path, manifests: Path, **generate):
    g = {"max_new_tokens": 6, "batch_size": 4, "shard_size": 5, "prompts_per_clip": 2, "progress": False,
         "device": "cpu", **generate}  # two records per clip: shards, resumes and mixes get exercised
    return default_params({"paths": {"manifests": str(manifests), "generated": str(tmp_path / "gen")},
                             "model": {"llm": str(llm)}, "tracking": {"enabled": False}, "generate": g})


def shard_bytes(gen: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(gen.glob("shard-*.jsonl"))}


def test_records_have_the_contract_fields(tmp_path, tiny):
    params = params_for(tmp_path, *tiny)
    summary = run_generate(params)
    recs = list(read_records(tmp_path / "gen"))
    assert summary["records"] == len(recs) == 9 * 2  # 9 train+valid clips x 2 prompts
    r = recs[0]
    assert r["id"] == f"{r['clip_id']}#0" and r["dataset"] == "demo" and r["seed_description"].startswith("[00:00-")
    assert r["messages"][0] == {"role": "system", "content": TRAIN_SYSTEM_PROMPT}
    assert r["messages"][1]["content"] == f"{r['prompt']} <start_audio><|AUDIO|><end_audio>"
    assert r["messages"][1]["audios"][0]["audio"] == r["audio"]
    assert r["generator"] == str(tiny[0]) and r["generator_hash"].startswith("sha256:")
    assert r["gen_params"]["max_new_tokens"] == 6 and r["seed"] == 0 and r["prompt_id"].startswith("p")
    assert {x["split"] for x in recs} == {"train", "valid"}
    assert len(list(read_records(tmp_path / "gen", splits=["valid"]))) < len(recs)


def test_default_targets_all_come_from_the_backbone(tmp_path, tiny):
    """The paper's method by default: the repository's params.yaml asks for LLM targets only and the generator is the
    backbone, so every record's target was written by model.llm (no templated or other-LLM record)."""
    from desta.models.store import model_hash

    params = params_for(tmp_path, *tiny)
    assert default_params().generate.target_sources == ["llm"] and default_params().generate.generator is None
    run_generate(params)
    backbone = model_hash(tiny[0])
    recs = list(read_records(tmp_path / "gen"))
    assert recs and all(r["target_source"] == "llm" and r["generator_hash"] == backbone for r in recs)


def test_templated_targets_need_no_llm_and_mix_with_llm_targets(tmp_path, tiny, monkeypatch):
    from desta.selfgen import shards

    def no_llm(*args, **kwargs):
        raise AssertionError("templated targets must not load the generator")

    monkeypatch.setattr(shards, "load_engine", no_llm)
    summary = run_generate(params_for(tmp_path, *tiny, target_sources=["templated"]))
    recs = list(read_records(tmp_path / "gen"))
    assert summary["records"] == len(recs) == 3 * 2 + 6  # 3 speech clips with 2 labels, 6 sound/music with 1
    by_id = {r["id"]: r for r in recs}
    speech = by_id["demo/c000#t0"]
    assert speech["target_source"] == "templated" and speech["generator"] == "templates"
    assert speech["prompt_category"].startswith("templated:")
    assert {r["response"] for r in recs} >= {"Rain.", "Jazz.", "Female.", "hello number 0"}
    assert speech["messages"][0] == {"role": "system", "content": TRAIN_SYSTEM_PROMPT}
    monkeypatch.undo()
    mixed = run_generate(params_for(tmp_path, *tiny, target_sources=["llm", "templated"]))
    sources = [r["target_source"] for r in read_records(tmp_path / "gen")]
    assert mixed["records"] == len(sources) == 9 * 2 + 12 and sources.count("templated") == 12


def test_rerun_skips_and_resume_never_duplicates(tmp_path, tiny):
    params = params_for(tmp_path, *tiny)
    run_generate(params)
    gen = tmp_path / "gen"
    before = shard_bytes(gen)
    assert run_generate(params)["shards_generated"] == 0 and shard_bytes(gen) == before
    # simulate a kill mid-shard: shard 1 back to .partial with 2 good lines, a duplicate and a torn line
    lines = before["shard-00001.jsonl"].splitlines(keepends=True)
    (gen / "shard-00001.jsonl").unlink()
    (gen / "shard-00001.jsonl.partial").write_bytes(lines[0] + lines[1] + lines[1] + lines[2][:30])
    assert run_generate(params)["generated_records"] == len(lines) - 2
    assert shard_bytes(gen) == before
    ids = [r["id"] for r in read_records(gen)]
    assert len(ids) == len(set(ids))


def test_changed_settings_regenerate(tmp_path, tiny):
    run_generate(params_for(tmp_path, *tiny))
    summary = run_generate(params_for(tmp_path, *tiny, max_new_tokens=3))
    assert summary["shards_generated"] == summary["shards"]
    assert {r["gen_params"]["max_new_tokens"] for r in read_records(tmp_path / "gen")} == {3}


def test_generator_must_be_the_backbone_unless_ablation(tmp_path, tiny):
    other = make_tiny_llm(tmp_path / "other", seed=1)
    with pytest.raises(GeneratorMismatch, match="allow_different_generator"):
        run_generate(params_for(tmp_path, *tiny, generator=str(other)))
    summary = run_generate(params_for(tmp_path, *tiny, generator=str(other), allow_different_generator=True))
    assert summary["generator"] == str(other)


def test_batched_greedy_equals_one_at_a_time(tiny):
    from desta.models.store import load_llm

    model, tok = load_llm(str(tiny[0]))
    engine = HFEngine(model, tok, Decoding(max_new_tokens=8), batch_size=4)
    chats = [[{"role": "user", "content": "Describe the audio. " * (1 + i % 5)}] for i in range(10)]
    prompts = [engine.encode(c) for c in chats]
    batched = sorted((o for b in engine.generate(prompts, [0] * len(prompts)) for o in b), key=lambda o: o.index)
    single = [engine.generate_ids([p], [0])[0] for p in prompts]
    assert [o.text for o in batched] == [s[0] for s in single]
    assert length_buckets([5, 1, 3, 1], 2) == [[1, 3], [2, 0]]


def test_resume_partial_drops_torn_and_foreign_lines(tmp_path):
    p = tmp_path / "shard-00000.jsonl.partial"
    p.write_text('{"id": "a#0"}\n{"id": "zz#0"}\n{"id": "a#0"}\n{"id": "b#0"}\n{"id": "c#')
    assert list(resume_partial(p, {"a#0", "b#0", "c#0"})) == ["a#0", "b#0"]
    assert p.read_text() == '{"id": "a#0"}\n{"id": "b#0"}\n'


def test_sampled_records_survive_a_crash_and_resume_unchanged(tmp_path, tiny, monkeypatch):
    """do_sample: true is seeded per record, so a run that dies after its first flushed batch and is resumed writes
    the same bytes as an uninterrupted run (batch-position seeds restarted for the remaining records)."""
    from desta.selfgen import shards

    sample = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "shard_size": 9}
    run_generate(params_for(tmp_path / "whole", *tiny, **sample))
    whole = shard_bytes(tmp_path / "whole" / "gen")

    class Killed(Exception):
        pass

    append = shards.PartialShard.append

    def append_then_die(self, records):
        n = append(self, records)
        raise Killed(f"killed after flushing {n} records")

    monkeypatch.setattr(shards.PartialShard, "append", append_then_die)
    params = params_for(tmp_path / "resumed", *tiny, **sample)
    with pytest.raises(Killed):
        run_generate(params)
    gen = tmp_path / "resumed" / "gen"
    assert (gen / "shard-00000.jsonl.partial").read_text().count("\n") == 4 and not shard_bytes(gen)
    monkeypatch.undo()
    assert run_generate(params)["generated_records"] == 18 - 4
    assert shard_bytes(gen) == whole
    assert len({r["response"] for r in read_records(gen)}) > 9  # sampled: the answers differ from record to record
