"""Can a fresh connector make the frozen LLM *say* a speaker attribute? Dense-target control for issue 5 section 3.

    .venv/bin/python research/verbalise_probe.py [--params params.yaml] [--attribute gender] [--steps 100]
                                                   [--every 25] [--batch 8] [--lr 3e-4] [--answer short|sentence]

Run in a workspace where `desta prepare` has written paths.manifests. It trains a freshly initialised connector
(params.yaml's model and optimiser settings, plain PyTorch, no checkpoints) on one fixed question per train clip,
"What is the speaker's <attribute>?", answered from the metadata ("Female." with --answer short, "The speaker is
female." with --answer sentence), and every --every steps prints, for 40 train clips and every test clip (unseen
voices in the demo corpus), how often the right answer is the likelier of the two by option log-probability, with
its p-value against guessing. Unlike `desta train`, whose self-generated targets mention the attribute in a few
tokens of a few records, every target token here depends on it: the figure says whether the frozen LLM can be
steered to the attribute at all, and how fast. It is not the held-out benchmark: that asks other wordings and
also scores free-form answers (research/README.md, finding 5).
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

from desta.config import load_params
from desta.data.manifest import Clip, iter_clips
from desta.evaluate.likelihood import option_logprobs
from desta.evaluate.scorers import p_above_chance
from desta.models.audio_llm import DeSTA25AudioModel


def conversation(clip: Clip, attribute: str) -> list[dict]:
    question = f"What is the speaker's {attribute.replace('_', ' ')}? <|AUDIO|>"
    return [{"role": "user", "content": question, "audios": [{"audio": clip.audio, "text": clip.transcript or ""}]}]


def answer(value: str, style: str) -> str:
    return f"{value}." if style == "short" else f"The speaker is {value.lower()}."


def accuracy(model: DeSTA25AudioModel, clips: list[Clip], attribute: str, values: list[str], style: str
             ) -> tuple[int, float]:
    """(right, p-value): clips whose true value is the likelier of the options as the whole answer."""
    model.eval()
    scores = option_logprobs(model, [conversation(c, attribute) for c in clips],
                                   [[answer(v, style) for v in values]] * len(clips))
    model.train()
    right = [values[max(range(len(values)), key=s.__getitem__)] == getattr(c, attribute)
             for s, c in zip(scores, clips, strict=True)]
    return sum(right), p_above_chance(right, [1 / len(values)] * len(right))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--attribute", default="gender", help="a Clip field with a few word values (default gender)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="default: params.yaml train.lr")
    ap.add_argument("--answer", choices=("short", "sentence"), default="short")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = random.Random(params.train.seed)
    torch.manual_seed(params.train.seed)
    split = {s: [c for c in iter_clips(params.paths.manifests, splits=[s]) if getattr(c, args.attribute)]
             for s in ("train", "test")}
    values = sorted({getattr(c, args.attribute) for c in split["train"]})
    if not 2 <= len(values) <= 8 or not split["test"]:
        raise SystemExit(f"{params.paths.manifests}: --attribute {args.attribute} needs 2-8 values on train clips "
                         f"and labelled test clips; found {values} and {len(split['test'])} test clips")
    model = DeSTA25AudioModel.from_params(params.model, params.model_cache_dir(), seed=params.train.seed).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = args.lr or params.train.lr
    opt = torch.optim.AdamW(trainable, lr=lr, betas=tuple(params.train.betas), weight_decay=params.train.weight_decay)
    train_probe = rng.sample(split["train"], min(40, len(split["train"])))
    print(f"{args.attribute} {values}: {len(split['train'])} train clips, {len(split['test'])} test clips; "
          f"answers like {answer(values[0], args.answer)!r}; batch {args.batch}, lr {lr}")

    def report(step: int, loss: float | None, t0: float) -> None:
        (tr, _), (te, p) = (accuracy(model, clips, args.attribute, values, args.answer)
                            for clips in (train_probe, split["test"]))
        extra = "" if loss is None else f" loss {loss:.3f}"
        print(f"step {step:4d}{extra}  train {tr}/{len(train_probe)}  test {te}/{len(split['test'])} "
              f"(p = {p:.3g})  {time.perf_counter() - t0:.0f} s", flush=True)

    t0 = time.perf_counter()
    report(0, None, t0)
    for step in range(1, args.steps + 1):
        batch = rng.sample(split["train"], args.batch)
        inputs = model.build_inputs([conversation(c, args.attribute) for c in batch],
                                    [answer(getattr(c, args.attribute), args.answer) for c in batch])
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / max(1, params.train.warmup_steps))
        loss = model(**inputs, loss_only=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, params.train.grad_clip)
        opt.step()
        opt.zero_grad()
        if step % args.every == 0 or step == args.steps:
            report(step, loss.item(), t0)


if __name__ == "__main__":
    main()
