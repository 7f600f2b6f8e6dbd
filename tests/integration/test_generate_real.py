"""Generation with real processes and the real backbone: SmolLM2-135M-Instruct answers seed descriptions, a SIGKILLed
run resumes without duplicates, and any worker count gives byte-identical shards (tiny Llama for the process tests)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from desta.records import read_records
from desta.selfgen.generate import run_generate

pytestmark = pytest.mark.integration

_spec = importlib.util.spec_from_file_location("selfgen_tiny", Path(__file__).parents[1] / "unit" /
                                               "test_selfgen_generate.py")
tiny_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_mod)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("selfgen_int")
    return tiny_mod.make_tiny_llm(root / "llm"), tiny_mod.make_manifest(root, 12)


@pytest.mark.slow
def test_real_backbone_answers_seed_descriptions(tmp_path):
    from desta.describe import strip_description_echo
    from desta.models.store import load_llm
    from desta.selfgen.engine import Decoding, HFEngine

    params = tiny_mod.params_for(tmp_path, "pypi:smollm2-135m-instruct", tiny_mod.make_manifest(tmp_path, 3),
                                 max_new_tokens=24, max_clips=2, prompts_per_clip=2)
    summary = run_generate(params)
    recs = list(read_records(tmp_path / "gen"))
    assert summary["records"] == len(recs) == 4 and summary["new_tokens"] > 0
    assert all(len(r["response"]) > 3 for r in recs), [r["response"] for r in recs]
    # batched (left-padded) greedy == one at a time on the real model (records carry strip_echo'd responses)
    model, tok = load_llm("pypi:smollm2-135m-instruct", params.model_cache_dir())
    engine = HFEngine(model, tok, Decoding(max_new_tokens=24), batch_size=4)
    chats = [[{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": f"{r['seed_description']}\n\n{r['prompt']}"}] for r in recs]
    prompts = [engine.encode(c) for c in chats]
    batched = sorted((o for b in engine.generate(prompts, [0] * len(prompts)) for o in b), key=lambda o: o.index)
    assert [strip_description_echo(o.text) for o in batched] == [r["response"] for r in recs]


@pytest.mark.slow
def test_worker_count_does_not_change_results(tmp_path, tiny):
    one = tmp_path / "one"
    run_generate(tiny_mod.params_for(one, *tiny))
    two = tmp_path / "two"
    run_generate(tiny_mod.params_for(two, *tiny, workers=2))
    assert tiny_mod.shard_bytes(one / "gen") == tiny_mod.shard_bytes(two / "gen")


def _cli(gen: Path, llm: Path, manifests: Path, *settings: str) -> list[str]:
    args = [sys.executable, "-m", "desta.cli", "generate", "-p", str(Path.cwd() / "params.yaml"),
            "-S", f"paths.manifests={manifests}", "-S", f"paths.generated={gen}", "-S", f"model.llm={llm}",
            "-S", "tracking.enabled=false", "-S", "generate.progress=false", "-S", "generate.device=cpu"]
    return args + [a for s in settings for a in ("-S", s)]


def _kill_after(args: list[str], partial: Path, lines: int) -> int:
    """Start `desta generate`, SIGKILL it once `partial` holds `lines` records; returns the lines flushed."""
    proc = subprocess.Popen(args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.is_file() and partial.read_text().count("\n") >= lines):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return partial.read_text().count("\n")


@pytest.mark.slow
def test_sigkill_loses_at_most_the_inflight_batch(tmp_path, tiny):
    llm, manifests = tiny
    gen = tmp_path / "gen"
    args = _cli(gen, llm, manifests, "generate.batch_size=1", "generate.shard_size=100", "generate.max_new_tokens=48",
                "generate.prompts_per_clip=4")
    flushed = _kill_after(args, gen / "shard-00000.jsonl.partial", 2)
    assert 2 <= flushed < 36 and not (gen / "shard-00000.jsonl").exists()
    assert subprocess.run(args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True).returncode == 0
    ids = [r["id"] for r in read_records(gen)]
    assert len(ids) == len(set(ids)) == 36
    state = json.loads((gen / "generate.json").read_text())
    assert state["shards"] == {"0": 36}
    assert state["summary"]["records"] == 36 and "seconds" not in state["summary"]  # same bytes on every run


@pytest.mark.slow
def test_sampled_generation_after_sigkill_equals_an_uninterrupted_run(tmp_path, tiny):
    """generate.do_sample: true, killed with SIGKILL mid-shard and rerun: the same records, byte for byte, as a run
    that was never interrupted (sampling is seeded per record, not per batch position)."""
    llm, manifests = tiny
    settings = ("generate.do_sample=true", "generate.temperature=1.0", "generate.batch_size=4",
                "generate.shard_size=24", "generate.max_new_tokens=32", "generate.prompts_per_clip=4")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    whole = tmp_path / "whole"
    assert subprocess.run(_cli(whole, llm, manifests, *settings), env=env, capture_output=True).returncode == 0
    gen = tmp_path / "gen"
    args = _cli(gen, llm, manifests, *settings)
    flushed = _kill_after(args, gen / "shard-00000.jsonl.partial", 4)
    assert 4 <= flushed < 24 and not (gen / "shard-00000.jsonl").exists()
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    assert tiny_mod.shard_bytes(gen) == tiny_mod.shard_bytes(whole)
