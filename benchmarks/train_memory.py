"""Peak resident memory (RSS) of every training rank at two sizes of the generated set. The target is a ratio of ~1:
a rank's memory should not grow with the data set (the paper's set is 5M records of ~5 KB each).

    python benchmarks/train_memory.py                                   # 2 ranks, 2,000 and 40,000 records
    python benchmarks/train_memory.py --sizes 5000,100000 --ranks 2 --steps 2 -S train.micro_batch_size=1

For each size it writes a synthetic generated set (records of ~5 KB, like DeSTA-AQA5M's, pointing at a few short
tone clips), runs `desta train` on it (run_train with the models and settings of params.yaml, plus -S overrides)
for a few steps under `torchrun --nproc_per_node RANKS`, and reads each rank's peak RSS (getrusage ru_maxrss at the
end of the run). Nothing is downloaded: the models come from the local store (desta models fetch ...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a speaker voice sound music tone calm bright low high slow fast clear noisy male female room "
         "background question answer describes audio clip recording short long steady warm").split()


def text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(WORDS))
    return " ".join(out)


def write_set(root: Path, n: int, n_valid: int = 8, n_clips: int = 16, seed: int = 0) -> Path:
    """root/generated/shard-*.jsonl with n train + n_valid valid records (~5 KB each) over n_clips 1 s clips."""
    rng = random.Random(seed)
    # what the model sees is the same in every record (so every step costs the same memory at any data-set size);
    # the rest (seed description, ids, provenance) differs, as in a real set
    prompt, response, transcript = text(rng, 150), text(rng, 700), text(rng, 300)
    audio, gen = root / "audio", root / "generated"
    audio.mkdir(parents=True, exist_ok=True)
    gen.mkdir(parents=True, exist_ok=True)
    t = np.arange(16000) / 16000
    clips = []
    for c in range(n_clips):
        clips.append(audio / f"clip{c:03d}.wav")
        sf.write(clips[-1], (0.3 * np.sin(2 * np.pi * (200 + 100 * c) * t)).astype(np.float32), 16000)
    per_shard, fh = 10_000, None
    for i in range(n + n_valid):
        if i % per_shard == 0:
            fh = (gen / f"shard-{i // per_shard:05d}.jsonl").open("w", encoding="utf-8")
        clip = str(clips[i % n_clips])
        rec = {"id": f"bench/clip{i % n_clips:03d}#{i}", "dataset": "bench", "seed_description": text(rng, 3000),
               "prompt": prompt, "response": response,
               "messages": [{"role": "system", "content": "Focus on the audio clips and instructions."},
                            {"role": "user", "content": f"{prompt} <start_audio><|AUDIO|><end_audio>",
                             "audios": [{"audio": clip, "text": transcript}]}],
               "clip_id": f"bench/clip{i % n_clips:03d}", "audio": clip, "split": "train" if i < n else "valid",
               "domain": "sound", "prompt_id": f"p{i % 97}", "prompt_category": "describe", "generator": "bench",
               "generator_hash": "0" * 16, "gen_params": {"temperature": 0.0, "max_new_tokens": 512}, "seed": i}
        fh.write(json.dumps(rec) + "\n")
        if (i + 1) % per_shard == 0 or i == n + n_valid - 1:
            fh.close()
    return gen


def worker(changes_file: str, out_dir: str, overrides: list[str]) -> None:
    """One rank (started by torchrun): train, then write this process's peak RSS."""
    from desta.config import load_params
    from desta.train.recipe import run_train

    params = load_params(ROOT / "params.yaml", overrides, merge=json.loads(Path(changes_file).read_text()))
    summary = run_train(params)
    rank = int(os.environ.get("RANK", "0"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    Path(out_dir, f"rss-rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_rss_mib": round(peak_mib, 1),
                                                                 "steps": summary["steps"]}))


def measure(n: int, args: argparse.Namespace, work: Path) -> list[dict]:
    root = work / f"n{n}"
    write_set(root, n)
    changes = {"paths": {"generated": str(root / "generated"), "checkpoints": str(root / "ckpt"),
                         "model": str(root / "model")},
               "tracking": {"enabled": False},
               "train": {"max_steps": args.steps, "eval_every": 10**6, "save_every": 10**6, "max_val_batches": 1,
                         "micro_batch_size": 1, "grad_accum": 1, "progress": False, "warmup_steps": 0}}
    (root / "changes.json").write_text(json.dumps(changes))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(args.ranks), "--master_port",
           str(port), __file__, "--worker", str(root / "changes.json"), str(root)]
    for o in args.overrides:
        cmd += ["-S", o]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    if done.returncode:
        raise SystemExit(f"training with {n} records failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = [json.loads(p.read_text()) for p in sorted(root.glob("rss-rank*.json"))]
    shard_mib = sum(p.stat().st_size for p in (root / "generated").glob("*.jsonl")) / 2**20
    return [{**r, "records": n, "generated_mib": round(shard_mib, 1)} for r in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,40000", help="two data-set sizes (train records)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--work", default=None, help="where the sets are written (default: a temporary dir, removed)")
    ap.add_argument("--worker", nargs=2, metavar=("CHANGES", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.overrides)
        return
    small, large = (int(x) for x in args.sizes.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="desta-train-memory-"))
    try:
        rows = measure(small, args, work) + measure(large, args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        print(json.dumps(r))
    by_rank = {r["rank"]: {} for r in rows}
    for r in rows:
        by_rank[r["rank"]][r["records"]] = r["peak_rss_mib"]
    for rank, peaks in sorted(by_rank.items()):
        print(f"rank {rank}: peak RSS {peaks[small]:.0f} MiB at {small:,} records, {peaks[large]:.0f} MiB at "
              f"{large:,} records: ratio {peaks[large] / peaks[small]:.3f}")


if __name__ == "__main__":
    main()
