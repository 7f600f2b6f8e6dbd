"""Training forward + backward with the LM head over every position vs only where a label follows (`loss_only`,
what `desta train` uses), side by side in one process on the same batches.

    python benchmarks/loss_only.py                    # CPU, the default demo shapes: whisper tiny + SmolLM2-135M
    python benchmarks/loss_only.py --paper --device cuda --dtype bfloat16 --batch 8 --seq 256

Weights are random (configs only, nothing is downloaded). Prints seconds per micro-batch for each mode, the ratio,
and the largest loss difference (the two modes compute the same loss).
"""

from __future__ import annotations

import argparse
import time

import torch
from train_throughput import LLAMA_31_8B, WHISPER_LARGE_V3, _sync, build_model, make_batch

WHISPER_TINY = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, decoder_layers=4,
                    decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80, vocab_size=51864,
                    max_source_positions=1500)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", action="store_true", help="whisper-large-v3 + Llama-3.1-8B shapes (GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4, help="micro batch (default 4, the demo's)")
    ap.add_argument("--seq", type=int, default=185, help="tokens per row incl. 64 audio slots (demo: ~185)")
    ap.add_argument("--response", type=int, default=40, help="label tokens per row (demo: ~40)")
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = (WHISPER_LARGE_V3, LLAMA_31_8B) if args.paper else (WHISPER_TINY, SMOLLM2_135M)
    torch.manual_seed(0)
    model = build_model(False, device, dtype, qformer_layers=2, shapes=shapes).train()
    model.audio_encoder.eval()
    model.language_model.eval()
    batches = []
    for _ in range(args.micro_batches):
        b = make_batch(model, args.batch, args.seq, args.response, seconds=3.0)
        b = {k: v.to(device) for k, v in b.items()}
        with torch.no_grad():
            b["audio_hidden"] = model.encode_audio(b.pop("input_features").to(dtype), b["audio_frames"])
        batches.append(b)
    times: dict[bool, list[float]] = {False: [], True: []}
    diff = 0.0
    for _ in range(args.repeats):
        for loss_only in (False, True):
            _sync(device)
            t = time.perf_counter()
            for b in batches:
                loss = model(**b, loss_only=loss_only).loss
                loss.backward()
            _sync(device)
            times[loss_only].append((time.perf_counter() - t) / len(batches))
    model.eval()  # no connector dropout: both modes see the same embeddings
    with torch.no_grad():
        for b in batches:
            diff = max(diff, abs(float(model(**b).loss) - float(model(**b, loss_only=True).loss)))
    full, fast = sorted(times[False])[len(times[False]) // 2], sorted(times[True])[len(times[True]) // 2]
    print(f"shapes: {'paper' if args.paper else 'demo'}; micro batch {args.batch} x {args.seq} tokens "
          f"({args.response} labelled); {args.device} {args.dtype}; median of {args.repeats}")
    print(f"full logits: {full:.3f} s/micro-batch   loss_only: {fast:.3f} s/micro-batch   "
          f"speed-up {full / fast:.2f}x   max |loss difference| {diff:.2e}")


if __name__ == "__main__":
    main()
