"""Does a trained connector's answer follow the voice, even where its most likely answer does not? (issue 5 §3)

    .venv/bin/python benchmarks/attribute_ranking.py [--params params.yaml] [--model data/model]
                                                     [--attribute gender] [--forms FORM ...] [--questions Q ...]

Run in a workspace after `desta train`. For every labelled test clip (unseen voices in the demo corpus) and a
two-valued attribute, it scores both values as the assistant's whole answer by log-probability, in each answer
form (default: the generator's sentence "The speaker is a female." and the bare "Female.") under each question,
for the trained connector (--model) and a freshly initialised one (params' seed) side by side, and prints:
  right      clips whose true value is the likelier answer (what choice scoring counts)
  first      clips given the first value (a model that says "male" to everyone scores right = the male clips)
  AUC        P(the margin log p(first) - log p(second) is larger for a random clip of the first value than for a
             random clip of the second): 0.5 = the answer does not follow the voice, whatever its bias
  p          one-sided Mann-Whitney p of that AUC, counting clips as independent
  by speaker the same AUC and p over each speaker's mean margin: clips of one voice are not independent, so
             with few speakers (10 in the demo's test split, 5 + 5: the best possible p is then 1/252) the per-clip p
             overstates the evidence
"""

from __future__ import annotations

import argparse

import torch
from scipy.stats import mannwhitneyu

from desta.config import load_params
from desta.data.manifest import Clip, iter_clips
from desta.models.audio_llm import DeSTA25AudioModel

GENDER_QUESTIONS = ("What is the gender of the speaker?", "Is the speaker male or female?")


def margins(model: DeSTA25AudioModel, clips: list[Clip], question: str, answers: list[str]) -> list[float]:
    """Per clip log p(answers[0]) - log p(answers[1]) as the whole answer to `question` about its audio."""
    convs = [[{"role": "user", "content": f"{question} <|AUDIO|>",
               "audios": [{"audio": c.audio, "text": c.transcript or ""}]}] for c in clips]
    with torch.no_grad():
        scores = model.option_logprobs(convs, [answers] * len(clips))
    return [a - b for a, b in scores]


def ranking(margin: list[float], first: list[bool]) -> tuple[int, int, float, float]:
    """(right, said first, AUC, one-sided Mann-Whitney p) of margins against which clips truly have the first value."""
    pos = [m for m, f in zip(margin, first, strict=True) if f]
    neg = [m for m, f in zip(margin, first, strict=True) if not f]
    test = mannwhitneyu(pos, neg, alternative="greater")
    right = sum((m > 0) == f for m, f in zip(margin, first, strict=True))
    return right, sum(m > 0 for m in margin), float(test.statistic) / (len(pos) * len(neg)), float(test.pvalue)


def by_speaker(margin: list[float], first: list[bool], clips: list[Clip]) -> tuple[list[float], list[bool]]:
    """Each speaker's mean margin and whether the speaker has the first value (clips without a speaker: their own)."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(c.speaker or c.id, []).append(i)
    return ([sum(margin[i] for i in idx) / len(idx) for idx in groups.values()],
            [first[idx[0]] for idx in groups.values()])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default=None, help="trained model dir (default: params.yaml paths.model)")
    ap.add_argument("--attribute", default="gender", help="a Clip field with exactly two values on test clips")
    ap.add_argument("--forms", nargs="+", default=["The speaker is a {v}.", "{V}."],
                    help="answer templates: {v} = value in lower case, {V} = as in the manifest")
    ap.add_argument("--questions", nargs="+", default=None,
                    help=f"default for gender: {' | '.join(GENDER_QUESTIONS)}; "
                         "else \"What is the speaker's <attribute>?\"")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    clips = [c for c in iter_clips(params.paths.manifests, splits=["test"]) if getattr(c, args.attribute)]
    values = sorted({getattr(c, args.attribute) for c in clips})
    if len(values) != 2:
        raise SystemExit(f"{params.paths.manifests}: --attribute {args.attribute} needs exactly 2 values on test "
                         f"clips, found {values}")
    questions = args.questions or (list(GENDER_QUESTIONS) if args.attribute == "gender"
                                   else [f"What is the speaker's {args.attribute.replace('_', ' ')}?"])
    first = [getattr(c, args.attribute) == values[0] for c in clips]
    speakers = len({c.speaker for c in clips if c.speaker})
    print(f"{args.attribute}: {len(clips)} test clips ({sum(first)} {values[0]}, {len(clips) - sum(first)} "
          f"{values[1]}), {speakers} speakers")
    cache = params.model_cache_dir()
    models = {"untrained": DeSTA25AudioModel.from_params(params.model, cache, seed=params.train.seed),
              "trained": DeSTA25AudioModel.from_pretrained(args.model or params.paths.model, cache)}
    print(f"{'connector':10s} {'question':36s} {'answer form':22s} right  first  AUC    p       by speaker: AUC  p")
    for name, model in models.items():
        model.eval()
        for question in questions:
            for form in args.forms:
                answers = [form.format(v=v.lower(), V=v) for v in values]
                margin = margins(model, clips, question, answers)
                right, said, auc, p = ranking(margin, first)
                *_, s_auc, s_p = ranking(*by_speaker(margin, first, clips))
                print(f"{name:10s} {question[:36]:36s} {form[:22]:22s} {right:2d}/{len(clips)} {said:3d}    "
                      f"{auc:.3f}  {p:<7.3g} {s_auc:.3f}  {s_p:.3g}", flush=True)


if __name__ == "__main__":
    main()
