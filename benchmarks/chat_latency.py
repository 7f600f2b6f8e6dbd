"""Chat latency with the default small models (whisper tiny.en + SmolLM2-135M): warm answer for a 5 s clip with
64 new tokens (target < 3 s on 2 CPU cores) and cold start in a new process with a populated cache (target < 10 s).

Run: HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/chat_latency.py [--runs 3] [--threads N] [--params params.yaml]
Prints one line per figure; the cache is populated first (conversion time is not part of any figure). On a busy
machine use --threads 1: two OpenMP threads competing with other processes can be 5x slower than one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "Good morning. I would like to book a table for two people at seven tonight, please."


def make_clip(path: Path, seconds: float = 5.0) -> Path:
    """espeak-ng speech padded (or cut) to exactly `seconds` at 16 kHz."""
    import numpy as np
    import soundfile as sf

    from desta.data.audio import resample
    from desta.data.tts import speak

    wave, sr = speak(TEXT)
    wave = resample(wave, sr, 16000)
    n = int(seconds * 16000)
    wave = np.pad(wave, (0, max(0, n - wave.size)))[:n]
    sf.write(path, wave, 16000)
    return path


def messages(clip: Path) -> list[dict]:
    return [{"role": "user", "content": "<|AUDIO|>\nWhat does the speaker want?",
             "audios": [{"audio": str(clip), "text": None}]}]


def cold_child(clip: str, params_path: str) -> None:
    """Runs in a fresh process: import, load both backbones + connector, answer once (8 tokens)."""
    t0 = time.perf_counter()
    from desta.config import load_params
    from desta.models.audio_llm import DeSTA25AudioModel

    params = load_params(params_path)
    model = DeSTA25AudioModel.from_params(params.model, params.model_cache_dir())
    t1 = time.perf_counter()
    model.generate(messages(Path(clip)), max_new_tokens=8)
    print(f"CHILD load={t1 - t0:.2f}s first_answer={time.perf_counter() - t1:.2f}s "
          f"process_cpu={time.process_time():.2f}s")


def warm(clip: Path, params_path: str, runs: int) -> None:
    import torch

    from desta.config import load_params
    from desta.models.audio_llm import DeSTA25AudioModel

    params = load_params(params_path)
    model = DeSTA25AudioModel.from_params(params.model, params.model_cache_dir())
    msgs = messages(clip)
    model.generate(msgs, max_new_tokens=8)  # warm-up
    totals, prep, cpu = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        with torch.no_grad():
            model._prepare([msgs], None, keep_encoder=True)  # decode + features + encoder + Whisper ASR
        prep.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        out = model.generate(msgs, max_new_tokens=64, min_new_tokens=64)[0]
        totals.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    total, pre = statistics.median(totals), statistics.median(prep)
    print(f"transcript: {out.transcripts[0]!r}")
    print(f"warm latency, 5 s clip, 64 new tokens: {total:.2f} s (median of {runs}; target < 3 s); "
          f"CPU time {statistics.median(cpu):.2f} s (wall ~ CPU / threads on an idle machine)")
    print(f"  audio part (decode + encoder + ASR): {pre:.2f} s; LLM part: {total - pre:.2f} s "
          f"= {64 / max(total - pre, 1e-9):.1f} tok/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--cold-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.cold_child:
        cold_child(args.cold_child, args.params)
        return 0
    from desta.config import load_params
    from desta.models import store

    params = load_params(args.params)
    for ref in (params.model.encoder, params.model.llm):
        store.resolve(ref, params.model_cache_dir())  # populate the cache (not timed)
    clip = make_clip(Path(tempfile.mkdtemp(prefix="desta-bench-")) / "clip5s.wav")
    t0 = time.perf_counter()
    threads = ["--threads", str(args.threads)] if args.threads else []
    child = subprocess.run([sys.executable, __file__, "--cold-child", str(clip), "--params", args.params, *threads],
                           capture_output=True, text=True, check=True)
    cold = time.perf_counter() - t0
    line = next(x for x in child.stdout.splitlines() if x.startswith("CHILD"))
    print(f"cold start (new process, populated cache) to first answer: {cold:.2f} s (target < 10 s) [{line[6:]}]")
    warm(clip, args.params, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
