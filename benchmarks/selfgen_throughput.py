"""Data-engine throughput on the prompts `desta generate` builds. Three comparisons, each printed as JSON:

    python benchmarks/selfgen_throughput.py                          # CPU: naive one-at-a-time loop vs HF engine
    python benchmarks/selfgen_throughput.py --sampling               # CPU: cost of per-record seeded sampling
    python benchmarks/selfgen_throughput.py --backend both --device cuda --n 1024   # GPU: vLLM vs HF at its best batch

--backend hf (default): tokens/s of a one-request-at-a-time loop vs the batched HF engine, and how many greedy
outputs are identical (fp32 near-ties can flip a token; reported, not hidden).
--sampling: sampled decoding three ways on the same prompts: per-record seeds in the batch (what generate does,
engine.RowSampler), transformers' batch sampling from one global generator (not reproducible per record), and
per-record seeds one request at a time (the other reproducible option).
--backend both (GPU, `pip install -e .[vllm]`): the HF engine at each of --hf-batches (its best kept) vs vLLM with
generate.vllm settings, greedy, bf16 by default; prints `vllm_over_best_hf` (the target is >= 3) and how many
outputs agree token for token after decoding.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from desta.conversation import generator_user_message
from desta.data.manifest import Clip
from desta.describe import seed_description
from desta.models.store import load_llm
from desta.selfgen.engine import Decoding, HFEngine, cut_at_eos, record_seed
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


def timed(engine: Any, prompts: list[list[int]], seeds: list[int]) -> tuple[list[str], int, float]:
    """(texts in request order, new tokens, seconds) of engine.generate over all prompts."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = sorted((o for b in engine.generate(prompts, seeds) for o in b), key=lambda o: o.index)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return [o.text for o in outs], sum(o.new_tokens for o in outs), time.perf_counter() - t0


def one_at_a_time(engine: HFEngine, prompts: list[list[int]], seeds: list[int]) -> tuple[list[str], int, float]:
    t0 = time.perf_counter()
    outs = [engine.generate_ids([p], [s])[0] for p, s in zip(prompts, seeds, strict=True)]
    return [o[0] for o in outs], sum(o[1] for o in outs), time.perf_counter() - t0


def rate(tokens: int, seconds: float) -> float:
    return round(tokens / seconds, 1)


def naive_vs_engine(engine: HFEngine, prompts: list[list[int]]) -> dict[str, Any]:
    seeds = [0] * len(prompts)
    timed(engine, prompts[:4], seeds[:4])  # warm-up (kernels, allocator)
    b_text, b_tok, b_s = timed(engine, prompts, seeds)
    n_text, n_tok, n_s = one_at_a_time(engine, prompts, seeds)
    return {"naive_tokens": n_tok, "naive_s": round(n_s, 2), "naive_tok_s": rate(n_tok, n_s), "engine_tokens": b_tok,
            "engine_s": round(b_s, 2), "engine_tok_s": rate(b_tok, b_s),
            "speedup_tok_s": round(rate(b_tok, b_s) / rate(n_tok, n_s), 2),
            "identical_outputs": f"{sum(a == b for a, b in zip(n_text, b_text, strict=True))}/{len(prompts)}"}


class GlobalSampling(HFEngine):
    """transformers' own batch sampling (one global RNG per batch): fast, but a record's text depends on its batch."""

    def generate_ids(self, rows, seeds):
        torch.manual_seed(seeds[0])
        ids, mask = self._pad_left(rows)
        d = self.decoding
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=d.max_new_tokens, do_sample=True,
                                  temperature=d.temperature, top_p=d.top_p, top_k=None, eos_token_id=self.eos_ids,
                                  pad_token_id=self.pad_id)
        cut = [cut_at_eos(row, self.eos_ids) for row in out[:, ids.shape[1]:].tolist()]
        return [(self.tok.decode(kept, skip_special_tokens=True).strip(), n) for kept, n in cut]


def sampling_cost(model: Any, tok: Any, args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, Any]:
    d = Decoding(args.max_new_tokens, do_sample=True, temperature=0.7, top_p=0.9)
    seeds = [record_seed(0, f"bench/{i}#0") for i in range(len(prompts))]
    row, glob = HFEngine(model, tok, d, args.batch_size), GlobalSampling(model, tok, d, args.batch_size)
    timed(row, prompts[:4], seeds[:4])
    r_tok, r_s = timed(row, prompts, seeds)[1:]
    g_tok, g_s = timed(glob, prompts, seeds)[1:]
    o_tok, o_s = one_at_a_time(row, prompts, seeds)[1:]
    return {"per_record_batched_tok_s": rate(r_tok, r_s), "global_rng_batched_tok_s": rate(g_tok, g_s),
            "per_record_one_at_a_time_tok_s": rate(o_tok, o_s),
            "per_record_batched_over_global": round(rate(r_tok, r_s) / rate(g_tok, g_s), 2),
            "per_record_batched_over_one_at_a_time": round(rate(r_tok, r_s) / rate(o_tok, o_s), 2)}


def vllm_vs_hf(model: Any, tok: Any, args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, Any]:
    from desta.config import load_params
    from desta.models.store import resolve
    from desta.selfgen.shards import load_vllm

    seeds = [0] * len(prompts)
    hf_runs = {}
    for b in args.hf_batches:
        engine = HFEngine(model, tok, Decoding(args.max_new_tokens), b)
        timed(engine, prompts[:b], seeds[:b])
        hf_runs[b] = timed(engine, prompts, seeds)
        del engine
    best_b = max(hf_runs, key=lambda b: rate(hf_runs[b][1], hf_runs[b][2]))
    hf_text, hf_tok, hf_s = hf_runs[best_b]
    model.to("cpu")
    torch.cuda.empty_cache()  # vLLM sizes its KV cache from the free memory
    cfg = load_params(args.params, merge={"generate": {"batch_size": args.vllm_max_seqs, "max_new_tokens":
                                                       args.max_new_tokens}}).generate
    engine = load_vllm(cfg, str(resolve(args.model)), args.dtype)
    timed(engine, prompts[:64], seeds[:64])
    v_text, v_tok, v_s = timed(engine, prompts, seeds)
    return {"hf_tok_s_by_batch": {b: rate(r[1], r[2]) for b, r in hf_runs.items()}, "hf_best_batch": best_b,
            "hf_tokens": hf_tok, "hf_s": round(hf_s, 2), "hf_tok_s": rate(hf_tok, hf_s), "vllm_tokens": v_tok,
            "vllm_s": round(v_s, 2), "vllm_tok_s": rate(v_tok, v_s), "vllm_max_num_seqs": args.vllm_max_seqs,
            "vllm_over_best_hf": round(rate(v_tok, v_s) / rate(hf_tok, hf_s), 2),
            "identical_outputs": f"{sum(a == b for a, b in zip(hf_text, v_text, strict=True))}/{len(prompts)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pypi:smollm2-135m-instruct")
    ap.add_argument("--backend", default="hf", choices=["hf", "both"], help="both: vLLM vs HF (GPU)")
    ap.add_argument("--sampling", action="store_true", help="cost of per-record seeded sampling (HF engine)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="requests per forward pass (as generate.batch_size)")
    ap.add_argument("--hf-batches", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128, 256],
                    help="--backend both: HF batch sizes to try (the best is compared)")
    ap.add_argument("--vllm-max-seqs", type=int, default=256, help="--backend both: vLLM max_num_seqs")
    ap.add_argument("--params", default="params.yaml", help="generate.vllm settings for --backend both")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on cuda, float32 on cpu (generate.dtype: auto)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_llm(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(args.device)
    prompts = [HFEngine(model, tok, Decoding(1), 1).encode(c) for c in requests(args.n)]
    result = {"model": args.model, "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
              "requests": args.n, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    if args.backend == "both":
        result |= vllm_vs_hf(model, tok, args, prompts)
    elif args.sampling:
        result |= sampling_cost(model, tok, args, prompts)
    else:
        result |= naive_vs_engine(HFEngine(model, tok, Decoding(args.max_new_tokens), args.batch_size), prompts)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
