"""The data engine on a real Ray cluster (`ray start --head`, 2 CPUs, loopback), as a user points it at one:
`desta generate` with generate.ray_address writes the same shards, byte for byte, as the local path (greedy, and
sampled after a SIGKILL of the driver and a rerun); `desta prepare` with prepare.ray_address writes the same
manifest shards and quarantine report as a local run."""

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from params_util import default_params

from desta.data.prepare import run_prepare
from desta.records import read_records
from desta.selfgen.generate import run_generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]



def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_mod = _load("selfgen_tiny", Path(__file__).parents[1] / "unit" / "test_selfgen_generate.py")
fixtures = _load("data_fixtures", Path(__file__).parents[1] / "data" / "fixtures.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster in its own process group (stopped by group id, never `ray stop`, which would stop
    every Ray cluster of the machine). Yields its GCS address."""
    port, temp = _free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={temp}", "--object-store-memory=200000000"]
    # token authentication as Ray >= 2.5x clusters use it, with this cluster's own token (never ~/.ray/auth_token)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)  # the drivers: run_generate in this process and the `desta` subprocesses
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with open(Path(temp) / "head.log", "w") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    probe = [sys.executable, "-c", f"import ray; ray.init(address={address!r}); ray.shutdown()"]
    try:
        deadline = time.time() + 240
        while time.time() < deadline and head.poll() is None:  # GCS up and the head's raylet registered
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                if subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode == 0:
                    break
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(1)
        assert head.poll() is None and time.time() < deadline, (Path(temp) / "head.log").read_text()
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_generate")
    return tiny_mod.make_tiny_llm(root / "llm"), tiny_mod.make_manifest(root, 9)


SETTINGS = {"prompts_per_clip": 4, "shard_size": 6, "batch_size": 2, "max_new_tokens": 24}


def test_generate_on_ray_equals_the_local_run(tmp_path, tiny, ray_head):
    expected = run_generate(tiny_mod.params_for(tmp_path / "local", *tiny, **SETTINGS))
    local = tiny_mod.shard_bytes(tmp_path / "local" / "gen")
    summary = run_generate(tiny_mod.params_for(tmp_path / "ray", *tiny, workers=2, ray_address=ray_head,
                                               **SETTINGS))
    assert summary["shards_generated"] == len(local) == 5 and summary["generated_records"] == 28
    same = ("records", "rejected", "shards", "shards_generated", "generated_records", "new_tokens", "generator_hash")
    assert {k: summary[k] for k in same} == {k: expected[k] for k in same}
    assert tiny_mod.shard_bytes(tmp_path / "ray" / "gen") == local
    state = {d: json.loads((tmp_path / d / "gen" / "generate.json").read_text()) for d in ("local", "ray")}
    for s in state.values():
        s["summary"].pop("out")
    assert state["ray"] == state["local"]
    assert not list((tmp_path / "ray" / "gen").glob("*.partial"))


def test_sampled_generate_on_ray_resumes_after_sigkill_with_the_local_bytes(tmp_path, tiny, ray_head):
    llm, manifests = tiny
    sample = {**SETTINGS, "do_sample": True, "temperature": 1.0}
    run_generate(tiny_mod.params_for(tmp_path / "local", *tiny, **sample))
    local = tiny_mod.shard_bytes(tmp_path / "local" / "gen")
    gen = tmp_path / "ray" / "gen"
    args = [sys.executable, "-m", "desta.cli", "generate", "-p", str(Path.cwd() / "params.yaml"),
            "-S", f"paths.manifests={manifests}", "-S", f"paths.generated={gen}", "-S", f"model.llm={llm}",
            "-S", "tracking.enabled=false", "-S", "generate.progress=false", "-S", "generate.device=cpu",
            "-S", "generate.workers=2", "-S", f"generate.ray_address={ray_head}"]
    args += [a for k, v in sample.items() for a in ("-S", f"generate.{k}={str(v).lower()}")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(gen.glob("*.partial")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(gen.glob("*.partial")) and len(tiny_mod.shard_bytes(gen)) < len(local), "killed too late"
    rerun = subprocess.run(args, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert tiny_mod.shard_bytes(gen) == local
    ids = [r["id"] for r in read_records(gen)]
    assert len(ids) == len(set(ids)) == 28


def test_prepare_on_ray_writes_the_local_manifest(tmp_path, ray_head, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixtures.bad_inputs(tmp_path / "bad")
    fixtures.librispeech(tmp_path / "ls")
    sources = [{"name": "mixed", "kind": "manifest", "path": "bad"},
               {"name": "ls", "kind": "librispeech", "path": "ls"}]
    outputs = {}
    for name, change in (("local", {"workers": 1}), ("ray", {"ray_address": ray_head})):
        params = default_params({"paths": {"raw": str(tmp_path / "raw"), "manifests": str(tmp_path / name)},
                                 "tracking": {"enabled": False},
                                 "prepare": {"sources": sources, "quality": {"max_duration_s": 10.0}, **change}})
        summary = run_prepare(params, progress=False)
        outputs[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}
    assert summary["clips"] == 7 and sum(summary["quarantined"]["by_reason"].values()) == 12
    assert outputs["ray"] == outputs["local"]
