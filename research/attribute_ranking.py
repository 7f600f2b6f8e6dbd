"""Does a trained connector's answer follow the voice, even where its most likely answer does not? (issue 5 §3)

    .venv/bin/python research/attribute_ranking.py [--params params.yaml] [--model data/model]
                                                     [--attribute gender] [--forms FORM ...] [--questions Q ...]
                                                     [--orders question-first audio-first]

Run in a workspace after `desta train`. For every labelled test clip (unseen voices in the demo corpus) and a
two-valued attribute, it scores both values as the assistant's whole answer by log-probability, in each answer
form (default: the generator's sentence "The speaker is a female." and the bare "Female.") under each question,
asked before the audio (the generated set's order) and after it (the order `desta evaluate` asks in), for the
trained connector (--model) and a freshly initialised one (params' seed) side by side, and prints:
  right      clips whose true value is the likelier answer (what choice scoring counts)
  first      clips given the first value (a model that says "male" to everyone scores right = the male clips)
  AUC        P(the margin log p(first) - log p(second) is larger for a random clip of the first value than for a
             random clip of the second): 0.5 = the answer does not follow the voice, whatever its bias
  p          one-sided Mann-Whitney p of that AUC, counting clips as independent
  by speaker the same AUC and p over each speaker's mean margin: clips of one voice are not independent, so
             with few speakers (10 in the demo's test split, 5 + 5: the best possible p is then 1/252) the per-clip p
             overstates the evidence
Then (unless --no-benchmark-forms) the held-out benchmark's own items for the attribute (desta evaluate, task
"heldout": system prompt, audio first, its question) on every test clip rather than its capped 6: the multiple-choice
item in both option orders scored like `choice_accuracy` / `calibrated_choice_accuracy` and once more against
the mean option log-probabilities of the same item asked about 8 train clips (`train-ref`: where the answer follows
the voice but its threshold sits on one value, this moves the threshold, using train clips only), and the open twin
answered freely and scored like `open_accuracy` (right, clips whose answer names the first value, exact binomial p).
Figures: research/README.md, findings 8, 10 and 11.
"""

from __future__ import annotations

import argparse

import torch
from scipy.stats import binomtest, mannwhitneyu

from desta.config import load_params
from desta.conversation import audio_entry, inference_messages
from desta.data.manifest import Clip, iter_clips
from desta.evaluate import scorers
from desta.evaluate.likelihood import option_logprobs
from desta.evaluate.tasks.common import DESTA_SYSTEM, MCQ_SYSTEM, audio_conversation, mcq_prompt, without_audio
from desta.evaluate.tasks.heldout import ALIASES, ATTRIBUTES
from desta.models.audio_llm import DeSTA25AudioModel

N_REFERENCES = 8  # train clips (first by id with the attribute) whose mean option log-probs set `train-ref`
GENDER_QUESTIONS = ("What is the gender of the speaker?", "Is the speaker male or female?")


def margins(model: DeSTA25AudioModel, clips: list[Clip], question: str, answers: list[str],
            audio_first: bool = False) -> list[float]:
    """Per clip log p(answers[0]) - log p(answers[1]) as the whole answer to `question` about its audio: asked
    before the audio (the generated set's order) or, with audio_first, after it (`desta chat` / `desta evaluate`'s
    order: the audio, a blank line, the question)."""
    convs = [inference_messages(question, [audio_entry(c.audio, c.transcript or "")]) if audio_first else
             [{"role": "user", "content": f"{question} <|AUDIO|>", "audios": [{"audio": c.audio,
                                                                             "text": c.transcript or ""}]}]
             for c in clips]
    with torch.no_grad():
        scores = option_logprobs(model, convs, [answers] * len(clips))
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


def benchmark_forms(model: DeSTA25AudioModel, clips: list[Clip], attribute: str, values: list[str],
                    references: list[Clip]) -> list[str]:
    """Lines for the held-out benchmark's MCQ item (both option orders) and open twin on every clip; `references`
    (train clips) give the `train-ref` threshold."""
    question, value_of = ATTRIBUTES[attribute]
    truth = [value_of(c) for c in clips]
    lines = []
    for order in (values, values[::-1]):
        prompt = mcq_prompt(question, order)
        convs = [audio_conversation(c.audio, prompt, MCQ_SYSTEM) for c in clips]
        with torch.no_grad():
            own = option_logprobs(model, convs, [order] * len(clips))
            prior = option_logprobs(model, [without_audio(convs[0])], [order])[0]  # the same text for every clip
            ref = option_logprobs(model, [audio_conversation(c.audio, prompt, MCQ_SYSTEM) for c in references],
                                        [order] * len(references))
        ref_mean = [sum(r[k] for r in ref) / len(ref) for k in range(len(order))]
        for name, base in (("choice", [0.0] * len(order)), ("calibrated", prior), ("train-ref", ref_mean)):
            scores = [[a - b for a, b in zip(s, base, strict=True)] for s in own]
            picked = [order[max(range(len(order)), key=s.__getitem__)] for s in scores]
            right = sum(x == t for x, t in zip(picked, truth, strict=True))
            lines.append(f"  MCQ {' / '.join(order):16s} {name:10s} {right:2d}/{len(clips)}  first "
                         f"{picked.count(values[0]):2d}  p {binomtest(right, len(clips), 0.5, 'greater').pvalue:.3g}")
    convs = [audio_conversation(c.audio, question, DESTA_SYSTEM) for c in clips]
    answers = [r.text for r in model.generate(convs, max_new_tokens=32)]
    named = [scorers.named_options(a, values, ALIASES.get(attribute)) for a in answers]
    right = sum(n == [t] for n, t in zip(named, truth, strict=True))
    p = binomtest(right, len(clips), 0.5, "greater").pvalue
    lines.append(f"  open (generated)                {right:2d}/{len(clips)}  first "
                 f"{sum(n == [values[0]] for n in named):2d}  p {p:.3g}  e.g. {answers[0]!r}")
    return lines


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
    ap.add_argument("--orders", nargs="+", choices=["question-first", "audio-first"],
                    default=["question-first", "audio-first"],
                    help="question before the audio (the generated set's order) and/or after it (desta evaluate's)")
    ap.add_argument("--no-benchmark-forms", dest="benchmark_forms", action="store_false",
                    help="skip the held-out benchmark's own items (2.5 min per connector on 2 CPU cores)")
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
    print(f"{'connector':10s} {'order':12s} {'question':36s} {'answer form':22s} right  first  AUC    p       "
          "by speaker: AUC  p")
    for name, model in models.items():
        model.eval()
        for order in args.orders:
            for question in questions:
                for form in args.forms:
                    answers = [form.format(v=v.lower(), V=v) for v in values]
                    margin = margins(model, clips, question, answers, audio_first=order == "audio-first")
                    right, said, auc, p = ranking(margin, first)
                    *_, s_auc, s_p = ranking(*by_speaker(margin, first, clips))
                    print(f"{name:10s} {order:12s} {question[:36]:36s} {form[:22]:22s} {right:2d}/{len(clips)} "
                          f"{said:3d}    {auc:.3f}  {p:<7.3g} {s_auc:.3f}  {s_p:.3g}", flush=True)
    if args.benchmark_forms and args.attribute in ATTRIBUTES:
        train = sorted((c for c in iter_clips(params.paths.manifests, splits=["train"]) if getattr(c, args.attribute)),
                       key=lambda c: c.id)[:N_REFERENCES]
        for name, model in models.items():
            print(f"{name}: the held-out benchmark's items, all {len(clips)} test clips (chance 0.5)")
            print("\n".join(benchmark_forms(model, clips, args.attribute, values, train)), flush=True)


if __name__ == "__main__":
    main()
