"""`desta validate` (DVC stage `validate`): the Great Expectations gate over the manifests and the generated set.

Builds one pandas table per subject (manifest, generated records, prompt-category shares), runs the suites of
expectations.py through GX checkpoints (ephemeral context, nothing written outside paths.validation) and writes
`<paths.validation>/report.json` plus the HTML data docs (`data_docs/index.html`). Critical failures raise
ValidationFailed after the report is written; warnings are only reported (unless validate.fail_on_warning).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from desta.config import Params
from desta.conversation import AUDIO_SLOT
from desta.data.manifest import read_table
from desta.prompt_pool import PromptPool, labelled, load_pool
from desta.records import REQUIRED_FIELDS, STATE_FILE, count_rejected, read_records
from desta.validate.expectations import CRITICAL, Check, category_checks, generated_checks, manifest_checks

log = logging.getLogger(__name__)

GENERATED_COLUMNS = [*REQUIRED_FIELDS, "clip_id", "audio", "split", "domain", "prompt_id", "prompt_category",
                     "target_source"]


class ValidationFailed(RuntimeError):
    """Critical expectations failed; the message lists them and names the report and data docs."""


def audio_present(path: str | None) -> bool:
    """Local files must exist; s3:// URIs are not fetched here (prepare checked them when it read them)."""
    if not path:
        return False
    return path.startswith("s3://") or Path(path).is_file()


def manifest_frame(params: Params) -> pd.DataFrame:
    """The manifest + `audio_exists` and `content_splits` (splits sharing the clip's content hash; 0 if no hash)."""
    df = read_table(params.paths.manifests).to_pandas()
    df["audio_exists"] = df["audio"].map(audio_present) if params.validate_.check_audio_exists else True
    per_hash = df.dropna(subset=["content_hash"]).groupby("content_hash")["split"].nunique()
    df["content_splits"] = df["content_hash"].map(per_hash).fillna(0).astype(int)
    return df


def messages_ok(messages: Any) -> bool:
    """system + user turns; the user turn carries the audio slot and one `audios` entry with an audio path."""
    if not isinstance(messages, list) or len(messages) < 2:
        return False
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if roles[:1] != ["system"] or not users:
        return False
    u = users[0]
    audios = u.get("audios") or []
    return AUDIO_SLOT in str(u.get("content", "")) and len(audios) >= 1 and all(a.get("audio") for a in audios)


def generated_frame(params: Params, manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per record (only the checked columns) + derived checks against the manifest."""
    rows = []
    for rec in read_records(params.paths.generated):
        row = {k: rec.get(k) for k in GENERATED_COLUMNS}
        row["messages_ok"] = messages_ok(rec.get("messages"))
        row["messages"] = json.dumps(rec.get("messages"), ensure_ascii=False)[:2000]
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*GENERATED_COLUMNS, "messages_ok"])
    split_of = dict(zip(manifest["id"], manifest["split"], strict=True))
    df["in_manifest"] = df["clip_id"].isin(split_of.keys())
    df["split_matches"] = df["clip_id"].map(split_of) == df["split"]
    df["clip_splits"] = df["clip_id"].map(df.groupby("clip_id")["split"].nunique()).fillna(0).astype(int)
    df["audio_exists"] = df["audio"].map(audio_present) if params.validate_.check_audio_exists else True
    return df


def category_frame(generated: pd.DataFrame) -> pd.DataFrame:
    shares = generated["prompt_category"].fillna("<none>").value_counts(normalize=True)
    return pd.DataFrame({"category": shares.index.astype(str), "share": shares.to_numpy(dtype=float)})


class Gate:
    """An ephemeral GX context whose checkpoints write data docs into `<validation>/data_docs`."""

    def __init__(self, docs_dir: Path):
        import great_expectations as gx

        self.gx = gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        base = str(Path(docs_dir).resolve())  # GX needs an absolute path without a root_directory
        self.ctx.add_data_docs_site("desta", {
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": base}})
        self.source = self.ctx.data_sources.add_pandas("desta")

    def run(self, subject: str, df: pd.DataFrame, checks: list[Check]) -> list[dict[str, Any]]:
        """Validate `df` against `checks` (one suite per severity); returns one result row per expectation."""
        from great_expectations.checkpoint import UpdateDataDocsAction

        gx = self.gx
        batch = self.source.add_dataframe_asset(subject).add_batch_definition_whole_dataframe("all")
        vds = []
        for severity in sorted({c.severity for c in checks}):
            suite = self.ctx.suites.add(gx.ExpectationSuite(name=f"{subject}_{severity}"))
            for c in checks:
                if c.severity == severity:
                    suite.add_expectation(c.build())
            vds.append(self.ctx.validation_definitions.add(
                gx.ValidationDefinition(name=f"{subject}_{severity}", data=batch, suite=suite)))
        cp = self.ctx.checkpoints.add(gx.Checkpoint(
            name=subject, validation_definitions=vds, result_format="SUMMARY",
            actions=[UpdateDataDocsAction(name="docs", site_names=["desta"])]))
        result = cp.run(batch_parameters={"dataframe": df})
        return [_row(subject, r) for vr in result.run_results.values() for r in vr.results]


def _row(subject: str, r: Any) -> dict[str, Any]:
    cfg = r.expectation_config
    res = r.result or {}
    # unexpected values come in data order; GX builds the missing ones from a set, so sort them (stable report.json)
    sample = res.get("partial_unexpected_list") or sorted(res.get("partial_missing_list") or [], key=str)
    return {"subject": subject, "expectation": cfg.type, "column": cfg.kwargs.get("column"),
            "severity": cfg.meta.get("severity"), "risk": cfg.meta.get("risk"), "success": bool(r.success),
            "unexpected_percent": res.get("unexpected_percent"), "observed": _short(res.get("observed_value")),
            "sample": [_short(s) for s in sample[:5]],
            "error": (r.exception_info or {}).get("exception_message") if not r.success else None}


def _short(v: Any, n: int = 200) -> Any:
    if isinstance(v, float | int | bool) or v is None:
        return v
    s = str(v)
    return s if len(s) <= n else s[:n - 3] + "..."


def _imported(params: Params) -> bool:
    state = Path(params.paths.generated) / STATE_FILE
    return state.is_file() and bool(json.loads(state.read_text()).get("imported"))


def expected_categories(pool: PromptPool, manifest: pd.DataFrame, domains: set[str]) -> list[str]:
    """Prompt categories a generated clip could have drawn: the prompt's domain was generated and, for prompts that
    require labels, some manifest clip of that domain has every one of them."""
    coverable: dict[tuple[tuple[str, ...], tuple[str, ...]], bool] = {}
    out: set[str] = set()
    for p in pool.prompts:
        key = (tuple(sorted(domains & set(p.domains))), p.requires)
        if key not in coverable:
            rows = manifest[manifest["domain"].isin(key[0])]
            coverable[key] = bool(key[0]) and (not p.requires or (set(p.requires) <= set(rows.columns) and bool(
                rows[list(p.requires)].map(labelled).all(axis=1).any())))
        if coverable[key]:
            out.add(p.category)
    return sorted(out)


def _subjects(params: Params) -> list[tuple[str, pd.DataFrame, list[Check]]]:
    manifest = manifest_frame(params)
    subjects = [("manifest", manifest, manifest_checks(params))]
    try:
        generated = generated_frame(params, manifest)
    except FileNotFoundError:
        if params.validate_.require_generated:
            raise
        log.warning("validate: no generated set in %s; validating the manifests only", params.paths.generated)
        return subjects
    llm = generated[generated["target_source"] != "templated"]  # templated targets do not draw from the pool
    expected = expected_categories(load_pool(), manifest, set(llm["domain"].dropna()))
    subjects.append(("generated", generated, generated_checks(params, _imported(params), expected)))
    if not _imported(params):
        subjects.append(("categories", category_frame(generated), category_checks(params)))
    return subjects


def render_failures(rows: list[dict[str, Any]]) -> str:
    """Readable lines for the console and the exception: subject, expectation, column, how much, risk, examples."""
    lines = []
    for r in rows:
        how = f"{r['unexpected_percent']:.1f}% unexpected" if r["unexpected_percent"] is not None else \
            (f"observed {r['observed']}" if r["observed"] is not None else "missing values")
        lines.append(f"  [{r['severity']}] {r['subject']}: {r['expectation']}({r['column'] or ''}) {how}\n"
                     f"      risk: {r['risk']}" + (f"\n      e.g. {r['sample'][:3]}" if r["sample"] else "")
                     + (f"\n      error: {r['error']}" if r["error"] else ""))
    return "\n".join(lines)


def run_validate(params: Params) -> dict[str, Any]:
    """Stage entry: run every suite, write report.json + data docs, raise ValidationFailed on critical failures."""
    from desta.tracking import stage_run

    out = Path(params.paths.validation)
    docs = out / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run(params, "validate", params.validate_) as tracker:
        gate = Gate(docs)
        rows, sizes = [], {}
        for subject, df, checks in _subjects(params):
            sizes[subject] = len(df)
            rows += gate.run(subject, df, checks)
        failed = [r for r in rows if not r["success"]]
        critical = [r for r in failed if r["severity"] == CRITICAL]
        warnings = [r for r in failed if r["severity"] != CRITICAL]
        blocking = critical + (warnings if params.validate_.fail_on_warning else [])
        rejected = count_rejected(params.paths.generated)
        report = {"success": not blocking, "rows": sizes, "rejected_empty_responses": rejected,
                  "expectations": len(rows), "critical_failures": len(critical),
                  "warnings": len(warnings), "data_docs": str(docs / "index.html"), "results": rows}
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str, ensure_ascii=False))
        tracker.log_metrics({"expectations": len(rows), "critical_failures": len(critical), "warnings": len(warnings),
                             "rejected_empty_responses": rejected})
        tracker.log_artifact(out / "report.json", "validation")
        tracker.log_artifact(docs, "validation/data_docs")
    if warnings:
        log.warning("validate: %d warning(s):\n%s", len(warnings), render_failures(warnings))
    if blocking:
        raise ValidationFailed(f"data validation failed: {len(blocking)} blocking expectation(s); report "
                               f"{out / 'report.json'}, data docs {docs / 'index.html'}\n{render_failures(blocking)}")
    return {k: v for k, v in report.items() if k != "results"} | {"report": str(out / "report.json")}
