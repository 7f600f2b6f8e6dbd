"""Offline held-out benchmark built from the manifest's test split (`desta evaluate`, task "heldout").

Four kinds of items, built deterministically from ground-truth metadata (attributes a clip lacks are skipped):
  mcq     multiple choice on gender, accent, speaking speed, pitch, emotion, sound class, music instrument / key /
          mode / tempo, and SNR; options = the answer + up to 3 other values seen in the manifest; clips balanced
          across answers; the generated answer scored with MMAU's string match after stripping "The correct answer
          is:" (`accuracy`) and, with evaluate.choice_scoring, the most likely option (`choice_accuracy`) and the
          option the audio makes most likely (`calibrated_choice_accuracy`: log p(option | audio, question) minus
          log p(option | question)); chance level reported beside each score
  open    (evaluate.heldout_open_questions) the same question about the same clip without the options, answered
          freely (attributes whose options are words, so not music key); right when the answer names the true
          value and no other option (`open_accuracy`; scorers.named_options, with "woman"/"man" for gender). Small
          backbones that cannot follow the multiple-choice format still show here what the connector carries.
  asr     "Transcribe the speech" on clips with a transcript; corpus WER (jiwer)
  ifeval  describe the audio under one IFEval constraint (data/instructions.json), answered by the audio model from
          the audio and by its own backbone from the clip's seed description as text (the layout the backbone wrote
          the training targets in): both following rates (Speech-IFEval's checkers) and the forgetting rate
          (model - backbone) / backbone, the paper's measure of what audio training cost the LLM
Every accuracy also gets `<name>_p`: the exact one-sided p-value of that score under uniform guessing among the
options (overall and per attribute).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from desta.conversation import generator_messages
from desta.data.manifest import Clip, iter_clips, read_table
from desta.describe import seed_description
from desta.evaluate import scorers
from desta.evaluate.loop import Item, Task, slice_metrics
from desta.evaluate.official import speech_ifeval
from desta.evaluate.tasks.common import DESTA_SYSTEM, MCQ_SYSTEM, audio_conversation, duration_bucket, mcq_prompt


def _tempo(bpm: float | None) -> str | None:
    return None if bpm is None else "slow" if bpm < 95 else "moderate" if bpm < 125 else "fast"


def _snr(db: float | None) -> str | None:
    return None if db is None else f"about {round(db):d} dB"


# words that name an option in a free-form answer besides the option itself (attribute -> option -> aliases)
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {"female": ("woman", "women", "girl", "lady"), "male": ("man", "men", "boy", "gentleman", "guy")},
}
CHOICE_METHODS = ("choice", "calibrated_choice")  # record keys `<method>_correct` -> metrics `<method>_accuracy`

# attribute -> (question, value of a clip or None)
ATTRIBUTES: dict[str, tuple[str, Callable[[Clip], str | None]]] = {
    "gender": ("What is the gender of the speaker?", lambda c: c.gender),
    "accent": ("What accent does the speaker have?", lambda c: c.accent),
    "speaking_speed": ("How fast is the person speaking?", lambda c: c.speaking_speed),
    "pitch": ("How would you describe the pitch of the speaker's voice?", lambda c: c.pitch),
    "emotion": ("What emotion does the speaker express?", lambda c: c.emotion),
    "sound_class": ("Which sound can be heard in the audio?", lambda c: c.sound_class),
    "music_instrument": ("Which instrument is playing?", lambda c: c.music_instrument),
    "music_key": ("What is the key of the music?", lambda c: c.music_key),
    "music_mode": ("Is the music in a major or a minor mode?", lambda c: c.music_mode),
    "music_tempo": ("What is the tempo of the music?", lambda c: _tempo(c.music_tempo_bpm)),
    "snr": ("How loud is the background noise relative to the speech (signal-to-noise ratio)?",
            lambda c: _snr(c.snr_db) if c.background else None),
}


def _rng(*parts: Any) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def load_instructions() -> dict[str, Any]:
    return json.loads(resources.files("desta.evaluate.data").joinpath("instructions.json").read_text())


class HeldoutTask(Task):
    name = "heldout"
    group_key = "attribute"
    choice_scoring = True

    def __init__(self, manifest_dir: str | Path, seed: int = 0, max_per_attribute: int | None = 20,
                 n_asr: int = 16, n_ifeval: int = 8, open_questions: bool = True,
                 generator_system: str = "You are a helpful assistant."):
        self.manifest_dir, self.seed = Path(manifest_dir), seed
        self.max_per_attribute, self.n_asr, self.n_ifeval = max_per_attribute, n_asr, n_ifeval
        self.open_questions = open_questions
        self.generator_system = generator_system  # generate.system_prompt: the backbone's reference answers

    def vocabularies(self) -> dict[str, list[str]]:
        """Every value each attribute takes anywhere in the manifest (the option pool), sorted."""
        cols = ["gender", "accent", "speaking_speed", "pitch", "emotion", "sound_labels", "background", "domain",
                "music_instrument", "music_key", "music_mode", "music_tempo_bpm", "snr_db"]
        rows = read_table(self.manifest_dir, columns=cols).to_pylist()  # the manifest SCHEMA has every column
        clips = [Clip(id="v", audio="", duration=0.0, sample_rate=0, channels=1, source="", **r) for r in rows]
        return {a: sorted({v for c in clips if (v := fn(c)) is not None}) for a, (_, fn) in ATTRIBUTES.items()}

    def items(self) -> list[Item]:
        clips = sorted(iter_clips(self.manifest_dir, splits=["test"]), key=lambda c: c.id)
        if not clips:
            raise ValueError(f"{self.manifest_dir}: the manifest has no test-split clips; the held-out benchmark "
                             "needs prepare.test_fraction > 0")
        return self._mcq(clips) + self._asr(clips) + self._ifeval(clips)

    def _balanced(self, clips: list[Clip], attr: str, fn: Callable[[Clip], str | None]) -> list[Clip]:
        """Clips that have the attribute, answers interleaved (A, B, C, A, B, C, ...; each answer's clips in a
        seeded hash order), cut at max_per_attribute: a capped set is balanced across answers, so a model that
        always gives the same answer scores chance, not whatever the first clips by id happen to be."""
        groups: dict[str, list[Clip]] = {}
        for c in clips:
            if (v := fn(c)) is not None:
                groups.setdefault(v, []).append(c)
        for v in groups:
            groups[v].sort(key=lambda c: hashlib.sha256(f"{self.seed}|{attr}|{c.id}".encode()).digest())
        order = [groups[v][rank] for rank in range(max(map(len, groups.values()), default=0))
                 for v in sorted(groups) if rank < len(groups[v])]
        return order[: self.max_per_attribute] if self.max_per_attribute else order

    def _mcq(self, clips: list[Clip]) -> list[Item]:
        vocab, items = self.vocabularies(), []
        for attr, (question, fn) in ATTRIBUTES.items():
            for c in self._balanced(clips, attr, fn):
                answer = fn(c)
                others = [v for v in vocab[attr] if v != answer]
                if not others:
                    continue
                rng = _rng(self.seed, c.id, attr)
                distractors = [others[i] for i in rng.permutation(len(others))[:3]]
                choices = [str(x) for x in rng.permutation([answer, *distractors])]
                conv = audio_conversation(c.audio, mcq_prompt(question, choices), MCQ_SYSTEM)
                items.append(Item(f"{c.id}#{attr}", conv, {"kind": "mcq", "answer": answer, "choices": choices},
                                  _slices(c, attribute=attr)))
                # open twin only when every option, said verbatim, is recognised (not music keys "C", "D", ...);
                # "options", not "choices": the likelihood choosers skip these
                if self.open_questions and all(scorers.named_options(o, [o]) == [o] for o in choices):
                    items.append(Item(f"{c.id}#{attr}#open", audio_conversation(c.audio, question, DESTA_SYSTEM),
                                      {"kind": "open", "answer": answer, "options": choices},
                                      _slices(c, attribute=attr)))
        return items

    def _asr(self, clips: list[Clip]) -> list[Item]:
        speech = [c for c in clips if c.transcript][: self.n_asr]
        prompt = "Transcribe the speech in the audio. Respond directly without any other words."
        return [Item(f"{c.id}#asr", audio_conversation(c.audio, prompt, DESTA_SYSTEM),
                     {"kind": "asr", "transcript": c.transcript}, _slices(c, attribute="transcription"))
                for c in speech]

    def _ifeval(self, clips: list[Clip]) -> list[Item]:
        spec, items = load_instructions(), []
        for k, c in enumerate(clips[: self.n_ifeval]):
            cons = spec["constraints"][k % len(spec["constraints"])]
            text = f"{spec['audio_requests'][k % len(spec['audio_requests'])]} {cons['text']}"
            ref = {"kind": "ifeval", "instruction_id_list": [cons["id"]], "kwargs": [cons["kwargs"]], "prompt": text}
            slices = _slices(c, attribute="instruction_following")
            items.append(Item(f"{c.id}#if", audio_conversation(c.audio, text, DESTA_SYSTEM), ref, slices))
            items.append(Item(f"{c.id}#if:backbone", generator_messages(seed_description(c), text,
                                                                        self.generator_system),
                              ref, slices, runner="backbone"))
        return items

    def score(self, item: Item, prediction: str) -> dict[str, Any]:
        ref = item.reference
        if ref["kind"] == "mcq":
            hit = scorers.mmau_string_match(ref["answer"], scorers.strip_answer_prefix(prediction), ref["choices"])
            return {"correct": float(hit), "n_options": len(ref["choices"])}
        if ref["kind"] == "open":
            named = scorers.named_options(prediction, ref["options"], ALIASES.get(item.slices["attribute"]))
            return {"open_correct": float(named == [ref["answer"]]), "n_options": len(ref["options"]), "named": named}
        if ref["kind"] == "ifeval":
            return {"followed": float(all(speech_ifeval.verdicts(prediction, ref["instruction_id_list"],
                                                                 ref["kwargs"])))}
        return {}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        mcq = [r for r in records if r["reference"]["kind"] == "mcq"]
        out = super().aggregate(mcq) if mcq else {}
        out["chance"] = scorers.chance_level([r["n_options"] for r in mcq])
        for method in CHOICE_METHODS:  # likelihood-ranked options (evaluate.choice_scoring), beside `accuracy`
            chosen = [r for r in mcq if f"{method}_correct" in r]
            if chosen:
                out |= {k: v for k, v in slice_metrics(chosen, f"{method}_correct", f"{method}_accuracy",
                                                       self.group_key).items() if k != "n_items"}
        for attr in sorted({r["slices"]["attribute"] for r in mcq}):
            out[f"{attr}/chance"] = scorers.chance_level([r["n_options"] for r in mcq
                                                          if r["slices"]["attribute"] == attr])
        open_ = [r for r in records if r["reference"]["kind"] == "open"]
        if open_:
            out |= {k: v for k, v in slice_metrics(open_, "open_correct", "open_accuracy", self.group_key).items()
                    if k != "n_items"}
        for key, rows in (("correct", mcq), *((f"{m}_correct", mcq) for m in CHOICE_METHODS),
                          ("open_correct", open_)):
            out |= _p_values(rows, key, key.replace("correct", "accuracy"))
        asr = [r for r in records if r["reference"]["kind"] == "asr"]
        if asr:
            out["wer"] = scorers.wer([r["reference"]["transcript"] for r in asr], [r["prediction"] for r in asr])
        out |= _forgetting([r for r in records if r["reference"]["kind"] == "ifeval"])
        return out


def _forgetting(records: list[dict[str, Any]]) -> dict[str, float]:
    """Following rates of the audio model and of its backbone on the same instructions, and the forgetting rate."""
    model = [r["followed"] for r in records if r["runner"] == "model"]
    backbone = [r["followed"] for r in records if r["runner"] == "backbone"]
    out: dict[str, float] = {}
    if model:
        out["ifeval_following_rate"] = scorers.mean(model)
    if backbone:
        out["backbone_ifeval_following_rate"] = scorers.mean(backbone)
    if model and backbone and out["backbone_ifeval_following_rate"]:
        out["ifeval_forgetting_rate"] = scorers.forgetting_rate(out["ifeval_following_rate"],
                                                                out["backbone_ifeval_following_rate"])
    return out


def _p_values(records: list[dict[str, Any]], key: str, metric: str) -> dict[str, float]:
    """`<metric>_p` overall and per attribute: P(uniform guessing scores at least as well), exact."""
    scored = [r for r in records if r.get(key) is not None]
    if not scored:
        return {}
    out: dict[str, float] = {}
    for attr in [None, *sorted({r["slices"]["attribute"] for r in scored})]:
        rows = [r for r in scored if attr is None or r["slices"]["attribute"] == attr]
        name = f"{metric}_p" if attr is None else f"{attr}/{metric}_p"
        out[name] = scorers.p_above_chance([r[key] for r in rows], [1.0 / r["n_options"] for r in rows])
    return out


def _slices(c: Clip, **extra: str) -> dict[str, str]:
    out = {"domain": c.domain, **extra}
    bucket = duration_bucket(c.duration)
    if bucket:
        out["duration"] = bucket
    return out
