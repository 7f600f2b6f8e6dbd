"""Speech-IFEval scored as its official code does: the released responses -> the released per-item verdicts.

CI runs the excerpt in tests/data/parity/speech_ifeval/ (see its README). With a clone of
github.com/kehanlu/Speech-IFEval at SPEECH_IFEVAL_REPO, the same checks run on every released item (2,666
rule-checked answers, 400 judge verdicts) and on the leaderboard rates, and the CoT judge prompt is compared with the
official script's text.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from desta.evaluate import ifeval_checks
from desta.evaluate.loop import run_task
from desta.evaluate.official import speech_ifeval as official
from desta.evaluate.tasks.common import BenchmarkFilesError
from desta.evaluate.tasks.speech_ifeval import SpeechIFEvalTask

EXCERPT = Path(__file__).resolve().parents[1] / "data" / "parity" / "speech_ifeval"
REPO = Path(os.environ.get("SPEECH_IFEVAL_REPO", "/nonexistent"))
MODELS = {"desta2": "DeSTA-ntu--DeSTA2-8B-beta", "llama3": "meta-llama--Meta-Llama-3-8B-Instruct"}
PARTS = {"closed_ended": "closed_ended_questions", "creative_writing": "creative_writing"}
needs_repo = pytest.mark.skipif(not (REPO / "outputs").is_dir(), reason="set SPEECH_IFEVAL_REPO to a clone of "
                                "github.com/kehanlu/Speech-IFEval to check every released item")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def released_reports(model: str, part: str) -> list[dict]:
    return read(REPO / "outputs" / MODELS[model] / "reports" / f"rule_eval@{PARTS[part]}.jsonl.jsonl")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("part", PARTS)
def test_excerpt_verdicts_equal_the_released_ones(model, part):
    rows = read(EXCERPT / f"{model}_{part}.jsonl")
    assert len(rows) >= 15
    for r in rows:
        assert official.verdicts(r["response"], r["instruction_id_list"], r["kwargs"]) == \
            r["follow_instruction_list"], f"item {r['id']}: {r['instruction_id_list']}"


def test_excerpt_holds_items_where_googles_checkers_disagree():
    """The excerpt covers the changed rules: Google's checkers give other verdicts there (no released answer starts
    with a quote, so the repeat_prompt change never decides an item; test_changed_rules_differ_from_google has it)."""
    differ = set()
    for model in MODELS:
        for part in PARTS:
            for r in read(EXCERPT / f"{model}_{part}.jsonl"):
                if ifeval_checks.check(r["response"], r["instruction_id_list"], r["kwargs"]) != \
                        r["follow_instruction_list"]:
                    differ.add(r["instruction_id_list"][0])
    assert differ == set(official.MODIFIED_RULES) - {"combination:repeat_prompt"}


@pytest.mark.parametrize("model", MODELS)
def test_cot_verdict_parsing_matches_the_released_parse(model):
    for r in read(EXCERPT / f"{model}_cot_judge.jsonl"):
        assert official.parse_cot_verdict(r["eval_response"]) is r["correct"]


@pytest.mark.parametrize(("text", "expected"), [
    ("The response explains each step.\nResult: YES", True),
    ("result: no", False),
    ("Result:  YES", None),  # two spaces: the official pattern wants exactly one whitespace
    ("Result: <YES>", None),
    ("RESULT: Yes. Result: NO", True),  # the first one counts
    ("YES", None),
])
def test_cot_verdict_parsing_rules(text, expected):
    assert official.parse_cot_verdict(text) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("* one\n* two\n- three", 3), ("• one\n• two", 2), ("1. one\n2. two\n3. three", 3), ("* a\\n* b", 2),
    ("**bold** line\n* item", 1), ("plain text", 0),
])
def test_bullet_count(text, expected):
    assert official.bullet_count(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("one\ntwo\n\nthree", 3), ("one *** two", 2), ("\n\none\n", 1), ("one\n \ntwo", None),
])
def test_paragraph_count(text, expected):
    assert official.paragraph_count(text) == expected


def test_changed_rules_differ_from_google():
    assert official.verdicts("yes", ["change_case:english_lowercase"], [{}]) == [True]
    assert ifeval_checks.check("yes", ["change_case:english_lowercase"], [{}]) == [False]  # langdetect: not English
    kw = [{"prompt_to_repeat": "Say hi."}]
    assert official.verdicts('"Say hi." Hi!', ["combination:repeat_prompt"], kw) == [True]
    assert official.verdicts("   ", ["change_case:english_lowercase"], [{}]) == [False]  # blank never follows


def test_following_rate_is_instruction_level():
    assert official.following_rate([[True, False], [True]]) == pytest.approx(2 / 3)
    assert official.following_rate([]) is None


@needs_repo
@pytest.mark.parametrize("model", MODELS)
def test_every_released_verdict_and_the_leaderboard_rates(model):
    expected = {("desta2", "closed_ended"): 83.71, ("desta2", "creative_writing"): 91.75,
                ("llama3", "closed_ended"): 93.35, ("llama3", "creative_writing"): 93.75}
    for part in PARTS:
        rows = released_reports(model, part)
        ours = [official.verdicts(r["response"], r["instruction_id_list"], r["kwargs"]) for r in rows]
        wrong = [r["id"] for r, v in zip(rows, ours, strict=True) if v != r["follow_instruction_list"]]
        assert not wrong, f"{model} {part}: {len(wrong)} of {len(rows)} verdicts differ, e.g. ids {wrong[:5]}"
        assert round(100 * official.following_rate(ours), 2) == expected[(model, part)]
    judged = read(REPO / "outputs" / MODELS[model] / "reports" / "llm_eval@chain-of-thought.jsonl")
    assert [official.parse_cot_verdict(r["eval_response"]) for r in judged] == [r["correct"] for r in judged]


def _cot_branch_strings(script: Path) -> tuple[str, list]:
    """(system prompt, parts of the user f-string) of the `metric == "cot"` branch of the official judge script."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    branch = next(n for n in ast.walk(tree) if isinstance(n, ast.If) and isinstance(n.test, ast.Compare)
                  and getattr(n.test.comparators[0], "value", None) == "cot")
    system, content = (stmt.value for stmt in branch.body[:2])
    return "".join(v.value for v in system.values), content.values


@needs_repo
def test_cot_judge_prompt_is_the_official_text():
    system, parts = _cot_branch_strings(REPO / "script" / "llm_evaluation.py")
    rendered = "".join(p.value if isinstance(p, ast.Constant) else {"instruction": "INSTR", "model_response": "RESP"}
                       [p.value.id] for p in parts)
    assert official.cot_prompt("INSTR", "RESP") == (system, rendered)


# ------------------------------------------------------------------------------- the task on the released layout
FIX = Path(__file__).resolve().parents[1] / "data" / "eval_fixtures"


def cot_judge(prompts):
    """Stands for the judge LLM: answers in the official format, YES when the response gives a reason."""
    assert all(system == official.COT_SYSTEM and user.startswith("User input: ") for system, user in prompts)
    return ["Result: YES" if "because" in user.split("Model's Response:", 1)[1] else "Result: NO"
            for _system, user in prompts]


def test_task_reads_the_release_layout_and_rates_ifrate_and_forgetting():
    task = SpeechIFEvalTask(FIX, judge=cot_judge)
    items = task.items()
    assert len(items) == 8 and sum(i.runner == "backbone" for i in items) == 4
    assert {i.id for i in items if i.reference["part"] == "cot"} == {"cot/0:model", "cot/0:backbone"}  # id-less file
    bb = next(i for i in items if i.id == "closed_ended/ce-1:backbone")
    assert bb.conversation[-1]["content"].startswith("Speech Input: [00:00:00 - 00:00:03] I will be there soon.")
    assert "audios" not in bb.conversation[-1]
    model = next(i for i in items if i.id == "closed_ended/ce-1:model")
    assert model.conversation[0] == {"role": "system", "content": "Follow the given instructions."}
    assert model.conversation[-1]["audios"][0]["audio"].endswith("speech_ifeval/audios/Gender_recognition/ce-1.wav")

    def answer_model(convs):  # follows the capital-letters item only; no reasoning
        return ["FEMALE, THE SPEAKER IS A WOMAN" if "capital" in c[-1]["content"] else "ok" for c in convs]

    def answer_backbone(convs):  # follows all three rule-based items and reasons
        out = []
        for c in convs:
            t = c[-1]["content"]
            out.append("THE SPEAKER IS A FEMALE VOICE" if "capital" in t else '"He sat down by the fire."'
                       if "quotation" in t else "A short angry tale." if "20 words" in t else
                       "It is female because the pitch is high.")
        return out

    metrics, records = run_task(task, {"model": answer_model, "backbone": answer_backbone}, batch_size=2)
    assert metrics["speech_ifeval/closed_ended_following_rate"] == 0.5
    assert metrics["speech_ifeval/creative_writing_following_rate"] == 1.0  # "ok" has fewer than 20 words
    assert metrics["speech_ifeval/cot_following_rate"] == 0.0
    assert metrics["speech_ifeval/ifrate"] == pytest.approx(0.5)
    assert metrics["speech_ifeval/backbone/ifrate"] == 1.0
    assert metrics["speech_ifeval/forgetting_rate"] == pytest.approx(-0.5)
    assert metrics["speech_ifeval/judge_unparsed"] == 0.0
    assert next(r for r in records if r["id"] == "closed_ended/ce-2:model")["follow_instruction_list"] == [False]


def test_task_without_judge_reports_rule_based_ifrate():
    task = SpeechIFEvalTask(FIX, judge=None)
    metrics, _ = run_task(task, {"model": lambda c: ["ok"] * len(c), "backbone": lambda c: ["ok"] * len(c)})
    assert "speech_ifeval/ifrate" not in metrics
    assert metrics["speech_ifeval/ifrate_rule_based"] == pytest.approx((0.0 + 1.0) / 2)


def test_check_files_names_the_missing_audio_and_the_fix(tmp_path):
    shutil.copytree(FIX / "speech_ifeval", tmp_path / "speech_ifeval")
    task = SpeechIFEvalTask(tmp_path, judge=cot_judge)
    with pytest.raises(BenchmarkFilesError, match=r"audios: 4 audio file\(s\).*missing.*audios\.tar"):
        task.check_files()
    for r in read(tmp_path / "speech_ifeval" / "eval_data" / "closed_ended_questions.jsonl") + \
            read(tmp_path / "speech_ifeval" / "eval_data" / "creative_writing.jsonl") + \
            read(tmp_path / "speech_ifeval" / "eval_data" / "chain-of-thought.jsonl"):
        clip = tmp_path / "speech_ifeval" / "audios" / r["audio_filepath"]
        clip.parent.mkdir(parents=True, exist_ok=True)
        clip.write_bytes(b"RIFF")
    task.check_files()


def test_old_flat_layout_and_missing_fields_fail_with_the_fix(tmp_path):
    (tmp_path / "speech_ifeval").mkdir()
    shutil.copy(FIX / "speech_ifeval" / "eval_data" / "creative_writing.jsonl", tmp_path / "speech_ifeval")
    with pytest.raises(BenchmarkFilesError, match=r"eval_data/closed_ended_questions.jsonl: missing.*data/eval_data/"):
        SpeechIFEvalTask(tmp_path).check_files()
    shutil.copytree(FIX / "speech_ifeval" / "eval_data", tmp_path / "speech_ifeval" / "eval_data")
    bad = tmp_path / "speech_ifeval" / "eval_data" / "creative_writing.jsonl"
    bad.write_text(json.dumps({"id": 1, "audio_filepath": "x.wav", "textual_audio": "t", "instruction": "i"}) + "\n")
    with pytest.raises(BenchmarkFilesError, match=r"creative_writing.jsonl:1: missing field\(s\) instruction_id_list"):
        SpeechIFEvalTask(tmp_path).check_files()


def test_missing_release_stops_the_run_before_any_judge_or_model(tmp_path, monkeypatch):
    from desta.config import load_params
    from desta.evaluate import judge, run

    monkeypatch.setattr(judge, "make_judge", lambda params: pytest.fail("the judge was built before the files"))
    monkeypatch.setattr(run, "load_model", lambda params: pytest.fail("a model loaded before the files were checked"))
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml",
                         [f"paths.benchmarks_root={tmp_path}", f"paths.eval={tmp_path / 'eval'}",
                          "evaluate.tasks=[speech_ifeval]"])
    with pytest.raises(BenchmarkFilesError, match=r"speech_ifeval/eval_data/closed_ended_questions.jsonl: missing"):
        run.run_evaluate(params)
