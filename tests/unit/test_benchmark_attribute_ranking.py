"""benchmarks/attribute_ranking.py's statistics: AUC and right/first counts of answer margins, per clip and per
speaker (clips of one voice pooled), on hand-made margins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from desta.data.manifest import Clip

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attribute_ranking.py"
spec = importlib.util.spec_from_file_location("attribute_ranking", SCRIPT)
ar = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ar)


def clip(i: int, speaker: str | None) -> Clip:
    return Clip(id=f"c{i}", audio="", duration=1.0, sample_rate=16000, channels=1, source="t", domain="speech",
                speaker=speaker)


def test_a_biased_model_whose_margins_follow_the_voice_has_auc_one_but_chance_answers():
    # every margin negative (always the second value) yet every first-value clip above every second-value clip
    margin, first = [-0.1, -0.2, -1.0, -1.5], [True, True, False, False]
    right, said, auc, p = ar.ranking(margin, first)
    assert (right, said, auc) == (2, 0, 1.0) and p == pytest.approx(1 / 6)


def test_margins_that_ignore_the_voice_have_auc_one_half():
    right, said, auc, _ = ar.ranking([0.3, -0.3, 0.3, -0.3], [True, True, False, False])
    assert (right, said, auc) == (2, 2, 0.5)


def test_by_speaker_pools_each_voice_into_its_mean_margin():
    clips = [clip(0, "a"), clip(1, "a"), clip(2, "b"), clip(3, None)]
    means, first = ar.by_speaker([1.0, 3.0, -1.0, 0.5], [True, True, False, False], clips)
    assert means == [2.0, -1.0, 0.5] and first == [True, False, False]


class VoiceFollower:
    """Hears the gender from the clip's file name; the audio-free prompt prefers the first listed option; `bias` is
    added to the log-prob of "Male" whatever the audio (a threshold sitting on one value)."""

    def __init__(self, bias: float = 0.0):
        self.bias, self.asked = bias, []

    def option_logprobs(self, convs, options):
        out = []
        for conv, opts in zip(convs, options, strict=True):
            self.asked.append(conv[-1]["content"])
            audio = [a["audio"] for m in conv for a in (m.get("audios") or [])]
            heard = ("Female" if "f" in audio[0] else "Male") if audio else opts[0]
            out.append([(0.0 if o == heard else -1.0) + (self.bias if audio and o == "Male" else 0.0) for o in opts])
        return out

    def generate(self, convs, max_new_tokens=32):
        return [type("R", (), {"text": "A woman." if "f" in conv[-1]["audios"][0]["audio"] else "The man."})()
                for conv in convs]


def gendered(voices: str, prefix: str = "c") -> list[Clip]:
    return [Clip(id=f"{prefix}{i}", audio=f"{g}{i}.wav", duration=1.0, sample_rate=16000, channels=1, source="t",
                 domain="speech", gender="Female" if g == "f" else "Male") for i, g in enumerate(voices)]


def test_benchmark_forms_score_the_heldout_items_on_every_clip():
    lines = ar.benchmark_forms(VoiceFollower(), gendered("ffmmm"), "gender", ["Female", "Male"], gendered("fm", "r"))
    assert len(lines) == 7  # 2 option orders x (choice, calibrated, train-ref) + open
    assert all(" 5/5 " in line for line in lines), lines
    assert "first  2" in lines[0] and "woman" in lines[-1]
    assert "MCQ Female / Male" in lines[0] and "MCQ Male / Female" in lines[3] and "train-ref" in lines[2]


def test_train_ref_moves_a_threshold_that_sits_on_one_value():
    # the answer follows the voice but "Male" wins every clip; train clips of both voices put the threshold back
    lines = ar.benchmark_forms(VoiceFollower(bias=1.5), gendered("ffmmm"), "gender", ["Female", "Male"],
                               gendered("fm", "r"))
    choice, train_ref = lines[0], lines[2]
    assert " 3/5 " in choice and "first  0" in choice
    assert " 5/5 " in train_ref and "first  2" in train_ref


def test_margins_ask_before_or_after_the_audio():
    model = VoiceFollower()
    ar.margins(model, gendered("f"), "Q?", ["Female.", "Male."])
    ar.margins(model, gendered("f"), "Q?", ["Female.", "Male."], audio_first=True)
    assert model.asked == ["Q? <|AUDIO|>", "<|AUDIO|>\n\nQ?"]
