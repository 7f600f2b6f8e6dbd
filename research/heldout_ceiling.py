"""The held-out MCQ ceiling of the frozen backbone: what it answers from the *text* seed description.

    .venv/bin/python research/heldout_ceiling.py [--params params.yaml] [--per-attribute 24]

Run in a workspace where `desta prepare` has written paths.manifests (e.g. after `dvc repro prepare`). Every
held-out multiple-choice item (the `heldout` task's, same prompt and options) is asked three ways of the backbone
named by params.yaml's `model.llm`, with no audio at all:
  description  the clip's seed description (what self-generation showed the backbone) before the question;
               options ranked by likelihood, as `heldout/choice_accuracy` ranks them
  calibrated   the same, minus each option's likelihood without the description, as
               `heldout/calibrated_choice_accuracy` ranks them (domain-conditional PMI)
  question     the question alone (the backbone's prior; calibrated accuracy needs information to beat chance)
A connector that carried everything the description says would score about the `description` / `calibrated`
figures; an attribute whose ceiling is at chance cannot show learning with this backbone. Prints one table row per
attribute and the mean chance level. Figures: research/README.md, finding 4.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import torch

from desta.config import load_params
from desta.data.manifest import iter_clips
from desta.describe import seed_description
from desta.evaluate.likelihood import option_logprobs
from desta.evaluate.run import argmax
from desta.evaluate.scorers import chance_level
from desta.evaluate.tasks.common import without_audio
from desta.evaluate.tasks.heldout import HeldoutTask
from desta.models.audio_llm import DeSTA25AudioModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--per-attribute", type=int, default=24, help="MCQ items per attribute (balanced across answers)")
    args = ap.parse_args()
    params = load_params(args.params)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    model = DeSTA25AudioModel.from_params(params.model, params.model_cache_dir()).eval()
    task = HeldoutTask(params.paths.manifests, seed=params.evaluate.seed, max_per_attribute=args.per_attribute,
                       n_asr=0, n_ifeval=0)
    clips = {c.id: c for c in iter_clips(params.paths.manifests, splits=["test"])}
    items = [i for i in task.items() if i.reference["kind"] == "mcq"]
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    n_options: dict[str, list[int]] = defaultdict(list)
    t0 = time.perf_counter()
    for item in items:
        attr, choices, answer = item.slices["attribute"], item.reference["choices"], item.reference["answer"]
        question = without_audio(item.conversation)
        described = [dict(m) for m in question]
        described[-1]["content"] = f"{seed_description(clips[item.id.split('#')[0]])}\n\n{described[-1]['content']}"
        with torch.no_grad():
            with_desc, prior = option_logprobs(model, [described, question], [choices, choices])
        picks = {"description": argmax(with_desc), "question": argmax(prior),
                 "calibrated": argmax([a - b for a, b in zip(with_desc, prior, strict=True)])}
        for way, pick in picks.items():
            hits[attr][way].append(choices[pick] == answer)
        n_options[attr].append(len(choices))
    ways = ("description", "calibrated", "question")
    print(f"{len(items)} items in {time.perf_counter() - t0:.0f} s, backbone {params.model.llm}")
    print(f"| attribute | n | chance | {' | '.join(ways)} |")
    print(f"|---|---|---|{'---|' * len(ways)}")
    for attr in sorted(hits):
        row = " | ".join(f"{sum(hits[attr][w]) / len(hits[attr][w]):.2f}" for w in ways)
        print(f"| {attr} | {len(n_options[attr])} | {chance_level(n_options[attr]):.2f} | {row} |")
    overall = " | ".join(f"{sum(sum(h[w]) for h in hits.values()) / len(items):.3f}" for w in ways)
    print(f"| all | {len(items)} | {chance_level([n for v in n_options.values() for n in v]):.3f} | {overall} |")


if __name__ == "__main__":
    main()
