"""Ingest throughput of `desta prepare`: clips/s per core for decode + resample + quality checks of 5 s wav clips,
and peak memory of the full stage at two corpus sizes (should be flat: shards are streamed).
Run: python benchmarks/ingest_throughput.py [--clips 400] [--sr 16000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from desta.config import load_params
from desta.data.prepare import _check_worker

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(root: Path, n: int, sr: int) -> None:
    """n distinct 5 s mono PCM-16 wav clips + a `manifest`-kind metadata.jsonl."""
    rng = np.random.default_rng(0)
    t = np.arange(5 * sr) / sr
    lines = []
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * (200 + i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / f"c{i:06d}.wav", wave.astype(np.float32), sr, subtype="PCM_16")
        lines.append(json.dumps({"file": f"c{i:06d}.wav", "domain": "sound"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def per_core_rate(root: Path, n: int) -> float:
    quality = load_params(ROOT / "params.yaml").prepare.quality.model_dump()
    tasks = [(str(root / f"c{i:06d}.wav"), f"c{i}", quality, 16000) for i in range(n)]
    _check_worker(tasks[0])  # warm caches / lazy imports
    start = time.perf_counter()
    for task in tasks:
        assert not isinstance(_check_worker(task)[1], tuple)
    return n / (time.perf_counter() - start)


STAGE = """
import resource, sys, time
from pathlib import Path
from desta.config import load_params
from desta.data.prepare import run_prepare
root, n, params_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = load_params(params_file, merge={"tracking": {"enabled": False}, "paths": {"manifests": root + "/manifests"},
    "prepare": {"workers": 1, "shard_size": 500, "sources": [{"name": "b", "kind": "manifest", "path": root,
                "n_clips": n}]}})
t = time.perf_counter()
s = run_prepare(p, progress=False)
print(s["clips"], time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def stage_run(root: Path, n: int) -> tuple[int, float, float]:
    cmd = [sys.executable, "-c", STAGE, str(root), str(n), str(ROOT / "params.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1].split()
    return int(out[0]), float(out[1]), float(out[2])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--sr", type=int, default=16000, help="sample rate of the generated clips (44100 adds resampling)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_corpus(root, args.clips, args.sr)
        rate = per_core_rate(root, args.clips)
        print(f"decode+resample+checks, 5 s wav @ {args.sr} Hz: {rate:.0f} clips/s per core "
              f"(target >= 200) -> {'OK' if rate >= 200 else 'BELOW TARGET'}")
        small, big = stage_run(root, args.clips // 4), stage_run(root, args.clips)
        for n, secs, rss in (small, big):
            print(f"desta prepare (1 worker), {n:>6} clips: {n / secs:6.0f} clips/s, peak RSS {rss:6.0f} MiB")
        print(f"peak RSS ratio {big[2] / small[2]:.2f} for {big[0] / small[0]:.0f}x the clips (flat ~ 1.0)")


if __name__ == "__main__":
    main()
