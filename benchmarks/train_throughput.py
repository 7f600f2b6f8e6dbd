"""Training throughput of the DeSTA2.5 connector at the paper's shapes: samples/s, tokens/s, peak GPU memory and MFU
for plain PyTorch (DDP under torchrun), DeepSpeed ZeRO-2 and ZeRO-3, through the same engines `desta train` uses.

    python benchmarks/train_throughput.py --tiny                       # CPU smoke (tiny random shapes, fp32)
    python benchmarks/train_throughput.py --batch 8 --seq 256          # one GPU, whisper-large-v3 + Llama-3.1-8B, bf16
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py --strategies torch,zero2,zero3
    python benchmarks/train_throughput.py --strategies torch --batch 16 --seq 256 --compile   # torch.compile'd parts
    bash benchmarks/train_mfu_gpu.sh                                   # the MFU candidates, one GPU, side by side

Weights are random (configs only, nothing is downloaded). FLOPs are counted, not estimated: one step runs under
torch.utils.flop_counter.FlopCounterMode, so the frozen encoder's forward, the connector's forward + backward and
the frozen LLM's forward + input-gradient backward (no weight gradients) are what is counted. MFU = counted FLOPs
per step / step time / peak (H100/H200 SXM dense bf16: 989 TFLOP/s; --peak-tflops to override).
--compile runs the frozen Whisper encoder, the connector and the frozen LLM decoder through torch.compile (FLOPs are
counted on the eager step first: the counter does not see inside compiled graphs; the same work either way).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperForConditionalGeneration

from desta.config import load_params
from desta.models.audio_llm import AudioLLMConfig, DeSTA25AudioModel
from desta.models.connector import default_target_layers
from desta.train.deepspeed import build_engine

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}

WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        decoder_layers=32, decoder_attention_heads=20, decoder_ffn_dim=5120, num_mel_bins=128,
                        vocab_size=51866, max_source_positions=1500)
LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY_WHISPER = dict(d_model=64, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
                    decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=80, vocab_size=1000,
                    max_source_positions=1500, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    decoder_start_token_id=1)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1000, max_position_embeddings=1024)


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype, qformer_layers: int,
                shapes: tuple[dict, dict] | None = None) -> DeSTA25AudioModel:
    """The composite with random backbones at the paper's (or tiny, or the given (whisper, llama)) shapes."""
    whisper_shape, llama_shape = shapes or ((TINY_WHISPER, TINY_LLAMA) if tiny else (WHISPER_LARGE_V3, LLAMA_31_8B))
    wcfg, lcfg = WhisperConfig(**whisper_shape), LlamaConfig(**llama_shape)
    lcfg._attn_implementation = wcfg._attn_implementation = "sdpa"
    with torch.device(device):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            whisper, llm = WhisperForConditionalGeneration(wcfg), LlamaForCausalLM(lcfg)
        finally:
            torch.set_default_dtype(prev)
    mcfg = project_params().model.model_copy(update={"qformer_layers": qformer_layers, "prompt_size": 64})
    cfg = AudioLLMConfig(**mcfg.model_dump(), encoder_hash="random", llm_hash="random",
                         resolved_layers=default_target_layers(wcfg.encoder_layers), placeholder_id=0)
    model = DeSTA25AudioModel(whisper, None, llm, None, cfg)
    model.connector.to(device)  # the connector trains in fp32 master weights (engines handle precision)
    return model


def make_batch(model: DeSTA25AudioModel, b: int, seq: int, response: int, seconds: float) -> dict[str, torch.Tensor]:
    """A synthetic batch in build_inputs' format: one audio (64 query slots at column 16) per row."""
    n_mels = model.audio_encoder.config.num_mel_bins
    vocab = model.language_model.config.vocab_size
    ids = torch.randint(1, vocab, (b, seq))
    labels = torch.full((b, seq), -100)
    labels[:, -response:] = ids[:, -response:]
    return {"input_ids": ids, "attention_mask": torch.ones(b, seq, dtype=torch.long), "labels": labels,
            "input_features": torch.randn(b, n_mels, 3000), "audio_frames": torch.full((b,), int(seconds * 50)),
            "audio_batch_index": torch.arange(b), "audio_positions": torch.full((b,), 16)}


def count_flops(engine, batch) -> float:
    """FLOPs of one step, counted. The LLM runs eager attention for this one step: torch's SDPA formula rejects
    grouped-query shapes (Llama-3.1's 8 KV heads), and eager attention does the same matmuls after repeat_kv."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = engine.module.language_model.config
    attn, cfg._attn_implementation = cfg._attn_implementation, "eager"
    try:
        with FlopCounterMode(display=False) as fc:
            engine.backward(engine.forward(batch))
            engine.step()
    finally:
        cfg._attn_implementation = attn
    return float(fc.get_total_flops())


def compile_parts(model: DeSTA25AudioModel) -> None:
    """torch.compile the encoder, the connector and the LLM decoder in place (state-dict keys unchanged); they
    compile on the first warm-up step. The LM head stays eager: loss_only runs it on a data-dependent subset."""
    model.audio_encoder.model.encoder.compile()
    model.connector.compile()
    model.language_model.get_decoder().compile()


def project_params():
    """The repository's params.yaml (settings have no defaults in code)."""
    return load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def bench(strategy: str, args: argparse.Namespace, device: torch.device) -> dict:
    stage = {"torch": 0, "zero2": 2, "zero3": 3}[strategy]
    precision = "bf16" if device.type == "cuda" and not args.fp32 else "fp32"
    cfg = project_params().train.model_copy(update=dict(
        strategy="torch" if stage == 0 else "deepspeed", zero_stage=stage or 2, precision=precision,
        micro_batch_size=args.batch, max_steps=10**6, warmup_steps=0, lr=1e-4))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = build_model(args.tiny, device, dtype, args.qformer_layers)
    engine = build_engine(model, cfg, device)
    engine.module.train()
    batch = {k: v.to(device) for k, v in make_batch(model, args.batch, args.seq, args.response, args.seconds).items()}
    try:
        flops = count_flops(engine, batch)
    except Exception as e:  # noqa: BLE001 - a counting failure must not lose the timings
        print(f"FLOP count failed ({type(e).__name__}: {e}); timings only")
        flops = float("nan")
    if args.compile:
        compile_parts(engine.module)
    for _ in range(args.warmup):
        engine.backward(engine.forward(batch))
        engine.step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        engine.backward(engine.forward(batch))
        engine.step()
    _sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    peak = PEAK_TFLOPS.get(next((k for k in PEAK_TFLOPS if k in _device_name(device)), ""), None)
    peak = args.peak_tflops or peak
    world = engine.world_size
    row = {"strategy": strategy + ("+compile" if args.compile else ""), "precision": precision, "world_size": world,
           "batch_per_rank": args.batch,
           "seq": args.seq, "step_s": round(dt, 4), "samples_per_s": round(args.batch * world / dt, 2),
           "tokens_per_s": round(args.batch * args.seq * world / dt, 1), "tflops_per_step": round(flops / 1e12, 3),
           "achieved_tflops_per_gpu": round(flops / dt / 1e12, 2),
           "mfu": round(flops / dt / (peak * 1e12), 4) if peak and not math.isnan(flops) else None,
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
           "trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)}
    del engine, model, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random shapes (CPU smoke test)")
    ap.add_argument("--strategies", default="torch,zero2,zero3")
    ap.add_argument("--batch", type=int, default=None, help="micro batch per rank (default 8; tiny 2)")
    ap.add_argument("--seq", type=int, default=None, help="LLM sequence length incl. 64 audio slots (default 256)")
    ap.add_argument("--response", type=int, default=96, help="response (label) tokens per sample")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length (valid frames the connector sees)")
    ap.add_argument("--qformer-layers", type=int, default=6, help="paper: 6")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--fp32", action="store_true", help="fp32 on GPU too")
    ap.add_argument("--compile", action="store_true", help="torch.compile encoder, connector and LLM decoder")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    args = ap.parse_args(argv)
    args.batch = args.batch or (2 if args.tiny else 8)
    args.seq = args.seq or (128 if args.tiny else 256)
    args.response = min(args.response, args.seq - 96)
    args.steps = args.steps or (2 if args.tiny else 10)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
        else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    print(f"device: {_device_name(device)}; shapes: {'tiny' if args.tiny else 'whisper-large-v3 + Llama-3.1-8B'}")
    for strategy in args.strategies.split(","):
        row = bench(strategy.strip(), args, device)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
