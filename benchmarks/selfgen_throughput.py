"""Data-engine throughput: generated tokens/s of a naive one-sample-at-a-time loop vs the batched engine, same prompts.

    python benchmarks/selfgen_throughput.py                       # CPU, SmolLM2-135M-Instruct, 32 requests
    python benchmarks/selfgen_throughput.py --device cuda --n 256 --batch-size 64 --dtype bfloat16   # GPU
Both paths decode greedily; the script prints tokens/s of each, the speed-up, and how many outputs are identical
(batched runs are left-padded; fp32 near-ties can flip a token, which is reported, not hidden).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from desta.conversation import generator_user_message
from desta.data.manifest import Clip
from desta.describe import seed_description
from desta.models.store import load_llm
from desta.selfgen.engine import Decoding, HFEngine
from desta.selfgen.prompts import load_pool, sample_prompts


def requests(n: int) -> list[list[dict[str, str]]]:
    """n generator chats built exactly like `desta generate` builds them (varied domains and lengths)."""
    pool = load_pool()
    chats = []
    for i in range(n):
        domain = ("speech", "sound", "music")[i % 3]
        meta = {"speech": {"transcript": f"I will meet you at the station at {i} o'clock.", "gender": "female",
                           "emotion": ("happy", "sad", "neutral")[i % 3]},
                "sound": {"sound_labels": ["dog bark", "rain"][: 1 + i % 2], "caption": "A dog barks in the rain."},
                "music": {"music_genre": "jazz", "music_instrument": "piano", "music_tempo_bpm": 90.0 + i}}[domain]
        clip = Clip(id=f"bench/{i}", audio="x.wav", duration=2.0 + i % 7, sample_rate=16000, channels=1,
                    source="bench", domain=domain, **meta)
        prompt = sample_prompts(pool, clip, 1, seed=0)[0]
        chats.append([{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": generator_user_message(seed_description(clip), prompt.text)}])
    return chats


def naive(engine: HFEngine, chats: list) -> tuple[list[str], int, float]:
    t0 = time.perf_counter()
    outs = [engine.generate_ids([engine.encode(c)], seed=0)[0] for c in chats]
    return [o[0] for o in outs], sum(o[1] for o in outs), time.perf_counter() - t0


def batched(engine: HFEngine, chats: list) -> tuple[list[str], int, float]:
    t0 = time.perf_counter()
    outs = sorted((o for b in engine.generate(chats, seed=0) for o in b), key=lambda o: o.index)
    return [o.text for o in outs], sum(o.new_tokens for o in outs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pypi:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="requests per forward pass (as generate.batch_size)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_llm(args.model, dtype=getattr(torch, args.dtype))
    engine = HFEngine(model.to(args.device), tok, Decoding(args.max_new_tokens), args.batch_size)
    chats = requests(args.n)
    batched(engine, chats[: min(4, args.n)])  # warm-up (kernels, allocator)
    b_text, b_tok, b_s = batched(engine, chats)
    n_text, n_tok, n_s = naive(engine, chats)
    same = sum(a == b for a, b in zip(n_text, b_text, strict=True))
    result = {"model": args.model, "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
              "requests": args.n, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "naive_tokens": n_tok, "naive_s": round(n_s, 2), "naive_tok_s": round(n_tok / n_s, 1),
              "engine_tokens": b_tok, "engine_s": round(b_s, 2), "engine_tok_s": round(b_tok / b_s, 1),
              "speedup_tok_s": round((b_tok / b_s) / (n_tok / n_s), 2), "speedup_wall": round(n_s / b_s, 2),
              "identical_outputs": f"{same}/{args.n}"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
