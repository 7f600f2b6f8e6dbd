"""Items/s of the evaluation loop (desta.evaluate.loop.run_task), batched vs one item at a time.

    .venv/bin/python benchmarks/eval_throughput.py [--items 16] [--batch-size 8] [--max-new-tokens 16] [--text-only]

Builds held-out items from a few rendered demo clips (test split) and answers them with the real model from
params.yaml's `model:` section (untrained connector: speed does not depend on the weights' values), or, with
--text-only, the retention task through the backbone. Prints items/s for batch size 1 and --batch-size and the
speed-up. Greedy decoding; max_new_tokens is a cap, so answers that stop early make both runs shorter.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import soundfile as sf

from desta.config import load_params
from desta.data import demo
from desta.data.manifest import Clip, write_shard
from desta.evaluate.loop import run_task
from desta.evaluate.tasks.heldout import HeldoutTask
from desta.evaluate.tasks.retention import RetentionTask


def render_manifest(root: Path, per_kind: int) -> Path:
    specs = [s for s in demo.plan(200, seed=0) if s["split"] == "test"]
    clips = []
    for kind in ("speech", "mixture", "sound", "music"):
        for spec in [s for s in specs if s["kind"] == kind][:per_kind]:
            wave, meta = demo.render(spec)
            path = root / "raw" / spec["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave, demo.SAMPLE_RATE, subtype="PCM_16")
            meta.pop("caption", None)
            clips.append(Clip(id=f"demo/{spec['file'][:-4]}", audio=str(path), duration=wave.size / demo.SAMPLE_RATE,
                              sample_rate=demo.SAMPLE_RATE, channels=1, source="demo", split="test", **meta))
    write_shard(clips, root / "manifests" / "manifest-00000.parquet")
    return root / "manifests"


def timed(task, generators, batch_size: int, n_items: int) -> float:
    t0 = time.perf_counter()
    run_task(task, generators, batch_size=batch_size, max_items=n_items)
    return n_items / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--text-only", action="store_true", help="retention items through the backbone (no audio)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    if args.text_only:
        from desta.evaluate.judge import chat_generate_fn
        from desta.models.store import load_llm

        llm, tok = load_llm(params.model.llm, params.model_cache_dir())
        task = _BackboneOnly(args.items)
        make = lambda bs: {"backbone": chat_generate_fn(llm, tok, args.max_new_tokens, bs)}  # noqa: E731
        n = len(task.items())
    else:
        from desta.models.audio_llm import DeSTA25AudioModel

        model = DeSTA25AudioModel.from_params(params.model, params.model_cache_dir()).eval()
        tmp = Path(tempfile.mkdtemp(prefix="desta-evalbench-"))
        task = HeldoutTask(render_manifest(tmp, per_kind=max(1, args.items // 8)), max_per_attribute=None)
        make = lambda bs: {"model": lambda c: [r.text for r in model.generate(  # noqa: E731
            c, max_new_tokens=args.max_new_tokens, batch_size=bs)]}
        n = min(args.items, len(task.items()))
    timed(task, make(args.batch_size), args.batch_size, min(n, args.batch_size))  # warm-up
    one = timed(task, make(1), 1, n)
    many = timed(task, make(args.batch_size), args.batch_size, n)
    print(f"items={n} max_new_tokens={args.max_new_tokens} {'text-only' if args.text_only else 'audio'}")
    print(f"batch_size=1: {one:.2f} items/s")
    print(f"batch_size={args.batch_size}: {many:.2f} items/s")
    print(f"speed-up: {many / one:.2f}x")


class _BackboneOnly(RetentionTask):
    """The retention items answered by the backbone only (what --text-only times)."""

    def items(self):
        return [i for i in super().items() if i.runner == "backbone"]


if __name__ == "__main__":
    main()
