"""Prefect flow `retrain`: the pipeline's stages as tasks (the same functions `desta <stage>` and dvc.yaml call),
under one MLflow parent run, with retries + exponential backoff on the I/O stages and the validation gate.

    python flows/retrain.py [--params params.yaml] [--profile smoke] [-S key=value ...]   # one run (ephemeral API)
    python flows/deploy.py                                                               # scheduled (cron) retraining

Thin on purpose: no logic beyond ordering, retries, the gate and the links shown in the Prefect UI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.tasks import exponential_backoff

from desta.config import Params, ParamsError, deep_merge, params_from_dict, parse_overrides
from desta.pipeline import merged_params
from desta.stages import STAGES, stage_function
from desta.tracking import log_pipeline_outputs, parent_run, run_url

IO_STAGES = ("prepare", "generate", "register")  # read/write sources, model store, S3, MLflow: retried with backoff


class ValidationGateError(RuntimeError):
    """The validation gate found critical failures; the message links to the report."""


def _stage_task(name: str):
    @task(name=name, task_run_name=name)
    def run_stage(params: Params) -> dict[str, Any]:
        return stage_function(name)(params)

    return run_stage


# stage name -> Prefect task (tests/unit/test_stages.py keeps this equal to STAGES, the CLI and dvc.yaml)
STAGE_TASKS = {name: _stage_task(name) for name in STAGES}


def with_retries(name: str, params: Params):
    """I/O stages get params.pipeline.io_retries retries, delays io_retry_delay_s * 2**k."""
    base = STAGE_TASKS[name]
    if name not in IO_STAGES or params.pipeline.io_retries == 0:
        return base
    delays = exponential_backoff(backoff_factor=params.pipeline.io_retry_delay_s)(params.pipeline.io_retries)
    return base.with_options(retries=params.pipeline.io_retries, retry_delay_seconds=delays)


def report_link(params: Params) -> str:
    report = Path(params.paths.validation) / "report.json"
    docs = sorted(Path(params.paths.validation).rglob("index.html"))
    return (docs[0] if docs else report).resolve().as_uri()


def gate(params: Params, summary: dict[str, Any] | None, error: Exception | None) -> None:
    """Fail the flow when validation raised or its report says it did not pass; the message links the report."""
    report = Path(params.paths.validation) / "report.json"
    data = json.loads(report.read_text()) if report.is_file() else {}
    passed = data.get("success", data.get("passed", (summary or {}).get("success", (summary or {}).get("passed"))))
    if error is None and passed is not False:
        return
    link = report_link(params)
    create_link_artifact(key="validation-report", link=link, description="Validation gate: FAILED")
    raise ValidationGateError(f"validation gate failed: {error or 'critical expectations failed'}; report: {link}")


def load_flow_params(params_path: str, profile: str | None, overrides: list[str] | None) -> Params:
    path = Path(params_path)
    raw = merged_params(path, profile, path.resolve().parent)
    return params_from_dict(deep_merge(raw, parse_overrides(overrides)), str(path))


@flow(name="retrain", log_prints=True)
def retrain(params_path: str = "params.yaml", profile: str | None = None, overrides: list[str] | None = None,
            workdir: str | None = None) -> dict[str, Any]:
    """End-to-end retraining: prepare -> generate -> validate (gate) -> train -> evaluate -> register."""
    if workdir:
        os.chdir(workdir)
    params, logger = load_flow_params(params_path, profile, overrides), get_run_logger()
    results: dict[str, Any] = {}
    with parent_run(params, "retrain", tags={"desta.orchestrator": "prefect"}) as tracker:
        url = run_url(params, tracker.run_id)
        if url:
            create_link_artifact(key="mlflow-run", link=url, description="MLflow parent run")
        for name in STAGES:
            if name == "validate":
                results[name] = _run_gate(params)
                continue
            results[name] = with_retries(name, params)(params)
            logger.info("stage %s done", name)
        log_pipeline_outputs(params, tracker)
    results["parent_run_id"] = tracker.run_id
    create_markdown_artifact(key="retrain-summary", markdown=_summary_markdown(results, url),
                             description="retrain: per-stage summary")
    return results


def _run_gate(params: Params) -> dict[str, Any] | None:
    summary, error = None, None
    try:
        summary = with_retries("validate", params)(params)
    except Exception as err:  # the gate decides; any failure becomes a ValidationGateError with the report link
        error = err
    gate(params, summary, error)
    return summary


def _summary_markdown(results: dict[str, Any], url: str | None) -> str:
    lines = ["# retrain", "", f"MLflow parent run: {url or results.get('parent_run_id')}", "",
             "| stage | summary |", "|---|---|"]
    for name in STAGES:
        text = json.dumps(results.get(name), default=str)
        lines.append(f"| {name} | `{text[:300]}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="overlay from infra/profiles/ (e.g. smoke)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        result = retrain(params_path=args.params, profile=args.profile, overrides=args.overrides)
    except (ParamsError, ValidationGateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
