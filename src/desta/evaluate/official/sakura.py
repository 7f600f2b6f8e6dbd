"""SAKURA judged as published (`desta evaluate`, task "sakura"): the official judge prompt, settings and verdicts.

Matched against ckyang1124/SAKURA @ a1fdb14: `evaluation/llm_judge.py` (system prompt, user template filled by
plain text replacement in the order question -> response -> ground truth, model gpt-4o-2024-11-20, temperature 0.0,
top_p 0.9; `max_tokens = 1024` is recorded in its output but never sent to the API; the reply is parsed with one
regular expression) and `evaluation/calculate_acc.py` (a judgement counts only when it is exactly "correct" or
"incorrect" after lower-casing and stripping; anything else is printed as invalid and stays in the denominator).
The prompt texts below are the released data, kept byte for byte (indentation included) so the judge sees the same
request. Parity: tests/unit/test_parity_sakura.py against verdicts recorded by running the official scripts.
"""

from __future__ import annotations

import re
from typing import Literal

JUDGE_MODEL = "gpt-4o-2024-11-20"
JUDGE_TEMPERATURE = 0.0
JUDGE_TOP_P = 0.9
NO_EXPLANATION, NO_JUDGEMENT = "No extracted explanation", "No extracted judgement"
Verdict = Literal["correct", "incorrect", "invalid"]

JUDGE_SYSTEM = (
    'You are a good judge. You will be given a question with list of possible options, a ground truth '
    'answer and a model generated response. \n'
    '                       You have to determine whether the model generated answer is correct.'
)
JUDGE_USER_TEMPLATE = (
    '\n'
    '    You will be given a question with list of possible options, a ground truth answer and a model '
    'generated response. Determine whether the model generated response is correct based on the '
    'following criteria:\n'
    '    1. Since there is one and only one corect answer, it should be judged incorrect if the model do '
    'not choose any option from the option list or it choose more than one option.\n'
    '    2. If the model choose one option from the option list, it should be judged correct if the '
    'chosen option aligns with the ground truth answer, otherwise it should be judged incorrect.\n'
    '    3. Read the question, options, ground truth answer and model generated response carefully '
    'before making a decision.\n'
    '\n'
    '    Considering the following examples:\n'
    '    Question: What is the capital of France? (a) Paris (b) London (c) Berlin (d) Madrid\n'
    '    Ground truth answer: (a) Paris\n'
    '    If the model generated response is: "The capital of France is Tokyo.", it should be judged '
    'incorrect since it does not choose any option from the option list.\n'
    '    If the model generated response is: "The capital of France is Paris and London.", it should be '
    'judged incorrect since it chooses more than one option from the option list.\n'
    '    If the model generated response is: "The capital of France is London.", it should be judged '
    'incorrect since it chooses one option from the option list but the chosen option does not align '
    'with the ground truth answer.\n'
    '    If the model generated response is: "The capital of France is Paris.", it should be judged '
    'correct since it chooses one option from the option list and the chosen option aligns with the '
    'ground truth answer.\n'
    '    Another Question: What is the underlying emotion of the speaker? (a) Happy (b) Sad (c) Angry '
    '(d) Neutral\n'
    '    Ground truth answer: (a) Happy\n'
    '    If the model generated response is: "The speaker is happy.", it should be judged correct since '
    'it chooses one option from the option list and the chosen option aligns with the ground truth '
    'answer.\n'
    '    If the model generated response is: "The speaker expresses happiness.", it should be judged '
    'correct since "happiness" aligns with the ground truth answer "happy", and they are just different '
    'part of speech of the same word.\n'
    '    If the model generated response is: "Happiness," it should be judged correct since it is also a '
    'valid derivative of the ground truth answer "happy".\n'
    '    \n'
    '    Now here is the question and the model generated response for you to judge:\n'
    '    Question: [QUESTION]\n'
    '    Ground truth answer: [GROUND_TRUTH_ANSWER]\n'
    '    Model generated response: [MODEL_GENERATED_RESPONSE]\n'
    '\n'
    '    Carefully make your decision based on the above criteria. Return your judgement with the '
    'following format:\n'
    '    Explanation: <Your explanation on your judgement>\n'
    '    Judgement: <Your judgement, either "correct" or "incorrect">\n'
    '    '
)

# Explanation, then the judgement up to the first blank line or the end (a final newline is allowed before the end)
_REPLY = re.compile(r"Explanation: (?P<explanation>.*?)\nJudgement: (?P<judgement>.*?)(?:\n\n|$)", re.DOTALL)


def judge_prompt(question: str, answer: str, response: str) -> tuple[str, str]:
    """(system, user) exactly as `llm_judge.py` sends them. The placeholders are replaced one after the other, so a
    response that itself contains `[GROUND_TRUTH_ANSWER]` gets the answer written into it (the official behaviour)."""
    user = JUDGE_USER_TEMPLATE
    for placeholder, value in (("[QUESTION]", question), ("[MODEL_GENERATED_RESPONSE]", response),
                               ("[GROUND_TRUTH_ANSWER]", answer)):
        user = user.replace(placeholder, value)
    return JUDGE_SYSTEM, user


def extract(reply: str) -> tuple[str, str]:
    """(explanation, judgement) from a judge reply; the official fallbacks when the format is not followed."""
    m = _REPLY.search(reply)
    return (m["explanation"], m["judgement"]) if m else (NO_EXPLANATION, NO_JUDGEMENT)


def verdict(reply: str) -> Verdict:
    """How `calculate_acc.py` counts a reply: "correct", "incorrect", or "invalid" (counted as not correct)."""
    word = extract(reply)[1].lower().strip()
    return word if word in ("correct", "incorrect") else "invalid"  # type: ignore[return-value]
