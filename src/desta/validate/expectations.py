"""The Great Expectations suites of `desta validate`: what each checks, how severe a failure is, and the risk it guards.

Three tables are validated (built by gate.py): the manifest (one row per clip, plus derived `audio_exists` and
`content_splits`), the generated set (one row per record, plus `messages_ok`, `in_manifest`, `split_matches`,
`clip_splits`, `audio_exists`) and the prompt-category shares. Each expectation carries meta {"risk", "severity"}:
"critical" failures stop the pipeline, "warning" ones are reported only. GX Core 1.x expectation classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import great_expectations.expectations as gxe

from desta.config import Params
from desta.data.manifest import DOMAINS, SCHEMA, SPLITS
from desta.records import REQUIRED_FIELDS

CRITICAL, WARNING = "critical", "warning"

# Template artefacts: the generator quoting what it was given instead of answering as if it heard the audio.
LEAK_PATTERNS = [
    r"\[\d{1,2}:\d{2}(?::\d{2})?\s*-\s*\d{1,2}:\d{2}",  # the seed description's [mm:ss-mm:ss] timestamps
    r"(?i)\bmeta-?data\b",
    r"(?i)\b(?:seed|text|textual|given|provided) description\b",
    r"(?i)\bdescription (?:provided|given|above)\b",
    r"\((?:Emotion|Gender|Pitch|Genre|Sound|Caption|Duration): ",  # the attribute block "(Gender: ..."
    r"\bDuration: \d+(?:\.\d)?s\b",
]
MANIFEST_DERIVED = ["audio_exists", "content_splits"]
TARGET_SOURCES = ("llm", "templated")  # generate.target_sources


@dataclass(frozen=True)
class Check:
    severity: str
    risk: str  # the failure this expectation guards against (shown in the report and the data docs)
    expectation: Any

    def build(self) -> Any:
        self.expectation.meta = {"risk": self.risk, "severity": self.severity}
        self.expectation.severity = self.severity  # GX's own FailureSeverity (critical | warning), shown in data docs
        return self.expectation


def _c(risk: str, exp: Any) -> Check:
    return Check(CRITICAL, risk, exp)


def _w(risk: str, exp: Any) -> Check:
    return Check(WARNING, risk, exp)


def manifest_checks(params: Params) -> list[Check]:
    v = params.validate_
    rates = v.sample_rates or params.prepare.quality.allowed_sample_rates
    checks = [
        _c("schema drift: a stage reading the manifest meets a missing or renamed column",
           gxe.ExpectTableColumnsToMatchSet(column_set=SCHEMA.names + MANIFEST_DERIVED, exact_match=True)),
        _c("a clip without id cannot be referenced by records, splits or predictions",
           gxe.ExpectColumnValuesToNotBeNull(column="id")),
        _c("duplicate ids silently merge two clips (wrong audio for a record, leakage across splits)",
           gxe.ExpectColumnValuesToBeUnique(column="id")),
        _c("a clip without audio path or duration crashes decoding and length bucketing",
           gxe.ExpectColumnValuesToNotBeNull(column="audio")),
        _c("durations outside the range waste compute (too long) or carry no signal (too short)",
           gxe.ExpectColumnValuesToBeBetween(column="duration", min_value=v.min_duration_s,
                                             max_value=v.max_duration_s)),
        _c("an unexpected original sample rate hints at a corrupt header or a wrong corpus recipe",
           gxe.ExpectColumnValuesToBeInSet(column="sample_rate", value_set=rates)),
        _c("an unknown domain gets no prompts and breaks per-domain metrics",
           gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS))),
        _c("an unknown or missing split drops the clip or leaks it into training",
           gxe.ExpectColumnValuesToNotBeNull(column="split")),
        _c("an unknown split name is read by no stage (the clip is silently lost)",
           gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))),
        _c("the same audio (content hash) in two splits leaks held-out clips into training",
           gxe.ExpectColumnValuesToBeBetween(column="content_splits", min_value=0, max_value=1)),
        _w("clips without a license cannot be redistributed or audited",
           gxe.ExpectColumnValuesToNotBeNull(column="license")),
        _w("more than two channels suggests a multi-track file that the mono downmix mangles",
           gxe.ExpectColumnValuesToBeBetween(column="channels", min_value=1, max_value=2)),
    ]
    if v.check_audio_exists:
        checks.append(_c("a manifest row whose file is gone crashes training mid-run",
                         gxe.ExpectColumnValuesToBeInSet(column="audio_exists", value_set=[True])))
    return checks


def generated_checks(params: Params, imported: bool, categories: list[str]) -> list[Check]:
    v = params.validate_
    leak_kw = {"column": "response", "regex_list": LEAK_PATTERNS}
    checks = [
        _c("schema drift: the trainer and evaluator read exactly the released DeSTA-AQA5M fields + provenance",
           gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_FIELDS) + ["clip_id", "audio", "split"],
                                            exact_match=False)),
        _c("records without id cannot be resumed, deduplicated or traced",
           gxe.ExpectColumnValuesToNotBeNull(column="id")),
        _c("duplicate record ids mean a resumed run wrote twice (over-weighted samples)",
           gxe.ExpectColumnValuesToBeUnique(column="id")),
        _c("an empty response trains the model to answer nothing",
           gxe.ExpectColumnValuesToNotBeNull(column="response")),
        _c("responses too short (truncated, failed) or too long (runaway generation) are bad targets",
           gxe.ExpectColumnValueLengthsToBeBetween(column="response", min_value=v.response_min_chars,
                                                   max_value=v.response_max_chars)),
        _c("a record without its prompt cannot be trained (the instruction is the input)",
           gxe.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1)),
        _c("malformed messages (no system/user turn, no <|AUDIO|> slot, no audios) crash or mislead the trainer",
           gxe.ExpectColumnValuesToBeInSet(column="messages_ok", value_set=[True])),
        _c("one clip's records in two splits leak held-out audio into training",
           gxe.ExpectColumnValuesToBeBetween(column="clip_splits", min_value=1, max_value=1)),
        _c(f"many responses quote the seed description (timestamps, 'metadata', attribute blocks): the model would "
           f"learn to recite text it never sees (critical above {v.max_leak_fraction:.0%})",
           gxe.ExpectColumnValuesToNotMatchRegexList(**leak_kw, mostly=1 - v.max_leak_fraction)),
        _w("some responses quote the seed description instead of answering as if hearing the audio",
           gxe.ExpectColumnValuesToNotMatchRegexList(**leak_kw)),
        _w("few distinct responses: the generator collapsed to a template answer",
           gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column="response", min_value=0.5)),
    ]
    if not imported:
        checks += [
            _c("a record whose clip is not in the manifest points at audio nobody validated",
               gxe.ExpectColumnValuesToBeInSet(column="in_manifest", value_set=[True])),
            _c("a record whose split differs from its clip's manifest split leaks test audio into training",
               gxe.ExpectColumnValuesToBeInSet(column="split_matches", value_set=[True])),
            _c("a record whose target source is unknown cannot be told apart from the backbone's own targets "
               "(the paper's method, and the ablation, rest on knowing who wrote each target)",
               gxe.ExpectColumnValuesToBeInSet(column="target_source", value_set=list(TARGET_SOURCES))),
            _w("a prompt category never sampled: the instruction pool is not being covered",
               gxe.ExpectColumnDistinctValuesToContainSet(column="prompt_category", value_set=categories)),
        ]
    if v.check_audio_exists:
        checks.append(_c("a record whose audio file is missing crashes training mid-run",
                         gxe.ExpectColumnValuesToBeInSet(column="audio_exists", value_set=[True])))
    return checks


def category_checks(params: Params) -> list[Check]:
    return [_w(f"a prompt category under {params.validate_.min_category_share:.0%} of records: the model sees too "
               f"few instructions of that kind (narrow instruction following)",
               gxe.ExpectColumnValuesToBeBetween(column="share", min_value=params.validate_.min_category_share))]
