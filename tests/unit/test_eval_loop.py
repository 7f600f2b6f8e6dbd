"""The generic loop, the held-out benchmark and the retention check, with deterministic generators (real callables
that answer from the conversation text; no model, no mocks)."""

from __future__ import annotations

import re

import pytest

from desta.data.manifest import Clip, write_shard
from desta.evaluate.loop import Item, Task, generate_all, run_task
from desta.evaluate.tasks.common import MCQ_SYSTEM, audio_conversation, without_audio
from desta.evaluate.tasks.heldout import HeldoutTask
from desta.evaluate.tasks.retention import RetentionTask


def _clip(i: int, split: str, domain: str, **kw) -> Clip:
    return Clip(id=f"demo/{domain}_{i:03d}", audio=f"data/raw/demo/{domain}_{i:03d}.wav", duration=3.0 + i,
                sample_rate=16000, channels=1, source="demo", domain=domain, split=split, **kw)


@pytest.fixture()
def manifest(tmp_path):
    clips = [
        _clip(0, "test", "speech", gender="Female", accent="British", speaking_speed="Fast", pitch="Low",
              transcript="The old fisherman left the keys."),
        _clip(1, "test", "speech", gender="Male", accent="American", speaking_speed="Slow", pitch="High",
              transcript="A young pilot fixed the bicycle.", background="rain", snr_db=5.0),
        _clip(2, "test", "sound", sound_labels=["siren"]),
        _clip(3, "test", "music", music_instrument="piano", music_key="C", music_mode="major", music_tempo_bpm=80.0),
        _clip(4, "train", "speech", gender="Female", accent="Scottish", speaking_speed="Normal", pitch="Normal",
              transcript="Train only.", background="siren", snr_db=20.0),
        _clip(5, "train", "sound", sound_labels=["bird chirps"]),
        _clip(6, "train", "music", music_instrument="flute", music_key="D", music_mode="minor",
              music_tempo_bpm=140.0),
    ]
    write_shard(clips, tmp_path / "manifest-00000.parquet")
    return tmp_path


def oracle(items: list[Item]):
    """Answers every MCQ correctly and transcribes perfectly: looks the item up by its prompt text."""
    def key(conv):
        return conv[-1]["audios"][0]["audio"], conv[-1]["content"]

    by_prompt = {key(it.conversation): it.reference for it in items}

    def generate(convs):
        out = []
        for c in convs:
            ref = by_prompt[key(c)]
            out.append(f'The correct answer is: "{ref["answer"]}"' if ref["kind"] == "mcq"
                       else f"I would say {ref['answer'].lower()}." if ref["kind"] == "open"
                       else ref.get("transcript", "hello"))
        return out

    return generate


def first_option(convs):
    return [re.findall(r'"([^"]+)"', c[-1]["content"])[0] if "options" in c[-1]["content"] else "" for c in convs]


def test_heldout_items_are_deterministic_and_skip_missing_attributes(manifest):
    a, b = HeldoutTask(manifest).items(), HeldoutTask(manifest).items()
    assert [(i.id, i.reference) for i in a] == [(i.id, i.reference) for i in b]
    mcq = [i for i in a if i.reference["kind"] == "mcq"]
    assert {i.slices["attribute"] for i in mcq} == {"gender", "accent", "speaking_speed", "pitch", "sound_class",
                                                     "music_instrument", "music_key", "music_mode", "music_tempo",
                                                     "snr"}
    assert not any(i.id.startswith("demo/sound_002#gender") for i in mcq)  # a sound clip has no gender
    assert all(i.id.split("#")[0] in {"demo/speech_000", "demo/speech_001", "demo/sound_002", "demo/music_003"}
               for i in a)  # only the test split
    for i in mcq:
        ch = i.reference["choices"]
        assert i.reference["answer"] in ch and len(set(ch)) == len(ch) and 2 <= len(ch) <= 4
        assert i.conversation[-1]["audios"][0]["audio"].endswith(".wav")
        assert "<|AUDIO|>" in i.conversation[-1]["content"]


def test_heldout_scores_with_oracle_and_first_option(manifest):
    task = HeldoutTask(manifest, n_ifeval=0)
    metrics, records = run_task(task, {"model": oracle(task.items())}, batch_size=3)
    assert metrics["heldout/accuracy"] == 1.0 and metrics["heldout/gender/accuracy"] == 1.0
    assert metrics["heldout/open_accuracy"] == 1.0 and metrics["heldout/gender/open_accuracy"] == 1.0
    assert metrics["heldout/wer"] == 0.0
    assert 0 < metrics["heldout/chance"] < 1 and metrics["heldout/gender/chance"] == 0.5  # 2 genders in manifest
    mcq = [r for r in records if r["reference"]["kind"] == "mcq"]
    expected = sum(r["reference"]["choices"][0] == r["reference"]["answer"] for r in mcq) / len(mcq)
    metrics2, _ = run_task(task, {"model": first_option}, batch_size=4)
    assert metrics2["heldout/accuracy"] == pytest.approx(expected)


def test_heldout_open_questions_ask_without_options_and_score_free_answers(manifest):
    task = HeldoutTask(manifest, n_asr=0, n_ifeval=0)
    items = task.items()
    mcq = {i.id: i for i in items if i.reference["kind"] == "mcq"}
    open_ = [i for i in items if i.reference["kind"] == "open"]
    assert all(i.id.removesuffix("#open") in mcq for i in open_)
    attrs = {i.slices["attribute"] for i in mcq.values()}
    assert {i.slices["attribute"] for i in open_} == attrs - {"music_key"}  # "C", "D": not words
    for i in open_:
        twin = mcq[i.id.removesuffix("#open")]
        assert (i.reference["answer"], i.reference["options"]) == (twin.reference["answer"], twin.reference["choices"])
        assert "Choose from" not in i.conversation[-1]["content"] and "correct answer" not in str(i.conversation)
        assert i.conversation[-1]["audios"] == twin.conversation[-1]["audios"]
    answers = {"speech_000.wav": "It sounds like a woman.", "speech_001.wav": "A man, I think, or a woman."}

    def free(convs):  # names the gender in words; the second answer names both options
        return [answers.get(c[-1]["audios"][0]["audio"].rsplit("/", 1)[1], "no idea") for c in convs]

    metrics, records = run_task(task, {"model": free})
    gender = {r["id"]: r for r in records if r["id"].endswith("#gender#open")}
    assert gender["demo/speech_000#gender#open"]["open_correct"] == 1.0
    assert sorted(gender["demo/speech_001#gender#open"]["named"]) == ["Female", "Male"]
    assert metrics["heldout/gender/open_accuracy"] == 0.5
    assert metrics["heldout/gender/open_accuracy_p"] == pytest.approx(0.75)  # 1 of 2 right at chance 1/2
    assert 0 < metrics["heldout/open_accuracy"] < 1 and 0 < metrics["heldout/accuracy_p"] <= 1
    assert not any(i.reference["kind"] == "open" for i in HeldoutTask(manifest, open_questions=False).items())


def test_heldout_instruction_following_of_the_model_and_its_backbone(manifest):
    """Each instruction is answered by the audio model from the audio and by the backbone from the clip's seed
    description (the generator's own layout): both rates and the forgetting rate (Speech-IFEval's Δ)."""
    task = HeldoutTask(manifest, max_per_attribute=1, n_asr=0, n_ifeval=4, generator_system="Be brief.")
    items = [i for i in task.items() if i.reference["kind"] == "ifeval"]
    model_items = [i for i in items if i.runner == "model"]
    backbone_items = [i for i in items if i.runner == "backbone"]
    assert len(model_items) == len(backbone_items) == 4
    text = backbone_items[0].conversation
    assert text[0] == {"role": "system", "content": "Be brief."} and "audios" not in text[1]
    assert text[1]["content"].startswith("[00:00-") and text[1]["content"].endswith(
        model_items[0].conversation[-1]["content"].split("\n\n", 1)[1])
    lower = "all lowercase words here, nothing else at all."
    metrics, records = run_task(task, {"model": lambda convs: [lower] * len(convs),
                                       "backbone": lambda convs: ["ALL CAPS."] * len(convs)})
    follow = [r["followed"] for r in records if r["reference"]["kind"] == "ifeval" and r["runner"] == "model"]
    assert follow[0] == 1.0  # the first constraint is english_lowercase
    assert metrics["heldout/ifeval_following_rate"] == pytest.approx(sum(follow) / 4)
    rate = metrics["heldout/backbone_ifeval_following_rate"]
    assert 0 < rate < 1  # ALL CAPS follows english_capital only
    assert metrics["heldout/ifeval_forgetting_rate"] == pytest.approx((sum(follow) / 4 - rate) / rate)


def test_retention_compares_model_with_backbone():
    task = RetentionTask(n_items=8)  # the 8 constraints on the first request
    model = lambda convs: ["Sorry."] * len(convs)  # noqa: E731  follows only "less than 40 words"
    backbone = lambda convs: ["a note about the weather, all in lowercase, is there anything else i can help with?"  # noqa: E731
                              ] * len(convs)
    metrics, records = run_task(task, {"model": model, "backbone": backbone}, batch_size=5)
    assert len(records) == 16 and {r["runner"] for r in records} == {"model", "backbone"}
    assert metrics["retention/ifeval_following_rate"] == 1 / 8
    backbone_rate = metrics["retention/backbone_following_rate"]
    assert backbone_rate == 3 / 8  # lowercase, fewer than 40 words, the end phrase
    assert metrics["retention/forgetting_rate"] == pytest.approx((1 / 8 - backbone_rate) / backbone_rate)


class _Echo(Task):
    name = "echo"
    group_key = "g"

    def items(self):
        return [Item(str(k), [{"role": "user", "content": "x" * k}], {"want": str(k)}, {"g": "even" if k % 2 == 0
                                                                                          else "odd", "len": "any"})
                for k in range(7)]

    def score(self, item, prediction):
        return {"correct": float(prediction == item.reference["want"])}


def test_loop_keeps_order_batches_and_slices():
    calls = []

    def gen(convs):
        calls.append(len(convs))
        return [str(len(c[0]["content"])) if len(c[0]["content"]) != 3 else "wrong" for c in convs]

    metrics, records = run_task(_Echo(), {"model": gen}, batch_size=3, max_items=None)
    assert calls == [3, 3, 1] and [r["id"] for r in records] == [str(k) for k in range(7)]
    assert metrics["echo/accuracy"] == pytest.approx(6 / 7)
    assert metrics["echo/odd/accuracy"] == pytest.approx(2 / 3) and metrics["echo/even/accuracy"] == 1.0
    assert metrics["echo/by_len/any/accuracy"] == pytest.approx(6 / 7)
    m2, _ = run_task(_Echo(), {"model": gen}, max_items=2)
    assert m2["echo/n_items"] == 2


def test_loop_errors_name_the_problem():
    with pytest.raises(KeyError, match="backbone"):
        generate_all([Item("a", [{"role": "user", "content": "q"}], runner="backbone")], {"model": len}, 2)
    with pytest.raises(ValueError, match="returned 0 answers"):
        generate_all([Item("a", [{"role": "user", "content": "q"}])], {"model": lambda c: []}, 2)


def test_heldout_capped_selection_is_balanced_across_answers(tmp_path):
    # 6 male clips sort before 2 female ones by id: a cap of 4 must still hold both answers, alternating
    clips = [_clip(i, "test", "speech", gender="Male" if i < 6 else "Female") for i in range(8)]
    write_shard(clips, tmp_path / "manifest-00000.parquet")
    task = HeldoutTask(tmp_path, max_per_attribute=4, n_asr=0, n_ifeval=0)
    answers = [i.reference["answer"] for i in task.items() if i.id.endswith("#gender")]
    assert sorted(answers) == ["Female", "Female", "Male", "Male"]
    # a constant answer scores exactly chance on a balanced set, for the options and for the open question
    metrics, _ = run_task(task, {"model": lambda convs: ["Male"] * len(convs)})
    assert metrics["heldout/gender/accuracy"] == 0.5 == metrics["heldout/gender/chance"]
    assert metrics["heldout/gender/open_accuracy"] == 0.5 and metrics["heldout/gender/accuracy_p"] > 0.5


def test_choice_scoring_reports_choice_accuracy_beside_generated_accuracy(manifest):
    task = HeldoutTask(manifest, n_asr=0, n_ifeval=0)
    items = task.items()

    by_content = {i.conversation[-1]["content"] + i.conversation[-1]["audios"][0]["audio"]: i.reference["answer"]
                  for i in items}

    def pick_answer(convs, options):  # a chooser that knows the answers: picks the right option index
        return [opts.index(by_content[c[-1]["content"] + c[-1]["audios"][0]["audio"]]) for c, opts in
                zip(convs, options, strict=True)]

    metrics, records = run_task(task, {"model": first_option}, batch_size=3, choosers={"model": pick_answer})
    assert metrics["heldout/choice_accuracy"] == 1.0 and metrics["heldout/gender/choice_accuracy"] == 1.0
    assert metrics["heldout/accuracy"] < 1.0  # the generated answers (first option) are scored separately
    assert all(r["choice"] == r["reference"]["answer"] for r in records if r["reference"]["kind"] == "mcq")
    assert not any("choice" in r for r in records if r["reference"]["kind"] == "open")  # no options to rank
    # a chooser ranking in several ways reports each; the calibrated one here always picks the first option
    def two_ways(convs, options):
        return [{"choice": i, "calibrated_choice": 0} for i in pick_answer(convs, options)]

    metrics, records = run_task(task, {"model": first_option}, batch_size=3, choosers={"model": two_ways})
    assert metrics["heldout/choice_accuracy"] == 1.0
    assert metrics["heldout/calibrated_choice_accuracy"] == metrics["heldout/accuracy"]  # = first_option's answers
    assert all(r["calibrated_choice"] == r["reference"]["choices"][0] for r in records
               if r["reference"]["kind"] == "mcq")
    # tasks without choice scoring ignore choosers
    plain, recs = run_task(RetentionTask(2), {"model": lambda c: ["x"] * len(c), "backbone": lambda c: ["x"] * len(c)},
                           choosers={"model": pick_answer})
    assert not any("choice" in r for r in recs) and not any("choice" in k for k in plain)


def test_without_audio_keeps_the_question_and_drops_every_audio():
    conv = audio_conversation("a.wav", 'Which? Choose from the following options: "x" or "y"', MCQ_SYSTEM)
    assert without_audio(conv) == [{"role": "system", "content": MCQ_SYSTEM},
                                   {"role": "user", "content": 'Which? Choose from the following options: "x" or "y"'}]
    assert conv[-1]["audios"]  # the input is not modified
    two = [{"role": "user", "content": "Compare <|AUDIO|> with <|AUDIO|>.", "audios": [{"audio": "a"}, {"audio": "b"}]}]
    assert without_audio(two) == [{"role": "user", "content": "Compare with ."}]
