"""Run-all helpers: params profiles (overlays such as infra/profiles/smoke.yaml) and a `dvc repro` wrapper that
groups every stage's MLflow run under one parent run.

    python -m desta.pipeline repro [--profile smoke] [--workdir DIR] [--force]   # dvc repro under a parent run
    python -m desta.pipeline params --profile smoke > params.smoke.yaml          # print merged params
    python -m desta.pipeline remote [--url s3://bucket/dvc]                      # DVC remote from params/env
    python -m desta.pipeline ablation [--profile smoke] [--arms self templated mix]  # the paper's ablation

DVC always reads ./params.yaml, so a profile is applied by writing the merged params into a workspace: `--workdir`
copies the project (dvc.yaml, src/, .dvc/config, params.yaml merged with the profile) into DIR and runs there;
without it the profile is merged into ./params.yaml only after the original is saved as params.yaml.bak.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from desta.config import Params, ParamsError, deep_merge, params_from_dict, parse_overrides

PROFILES_DIR = Path("infra/profiles")
WORKSPACE_FILES = ("dvc.yaml", "pyproject.toml", ".dvcignore")  # copied with src/ and .dvc/config
OFFLINE_ENV = {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def profile_path(profile: str, root: Path = Path(".")) -> Path:
    """`smoke` -> infra/profiles/smoke.yaml; a path to a YAML file is used as is."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = root / PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))
        raise ParamsError(f"{path}: profile {profile!r} not found; known profiles: {', '.join(known) or 'none'}")
    return path


def merged_params(base: Path, profile: str | None, root: Path = Path(".")) -> dict[str, Any]:
    """params.yaml deep-merged with a profile overlay (lists are replaced, not merged), validated strictly."""
    raw = yaml.safe_load(base.read_text()) or {}
    if profile:
        path = profile_path(profile, root)
        overlay = yaml.safe_load(path.read_text()) or {}
        merged = deep_merge(raw, overlay)
        params_from_dict(merged, str(base), [(str(base), raw), (f"profile {path}", overlay)])  # fail now, naming
        raw = merged  # the file that set the bad value
    return raw


def make_workspace(root: Path, dest: Path, profile: str | None = None) -> Path:
    """Copy what `dvc repro` needs (dvc.yaml, src/, .dvc/config, merged params.yaml) into dest; DVC initialised
    without git there (its own cache). Data folders are not copied: the pipeline rebuilds them."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    shutil.copytree(root / "src", dest / "src", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(root / PROFILES_DIR, dest / PROFILES_DIR, dirs_exist_ok=True)
    raw = merged_params(root / "params.yaml", profile, root)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if not (dest / ".dvc").is_dir():
        dvc(["init", "--no-scm", "-q"], dest)
        dvc(["config", "core.analytics", "false"], dest)
    return dest


def venv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current interpreter's bin dir first on PATH (dvc.yaml calls `desta`), telemetry off."""
    env = {**os.environ, **{k: v for k, v in OFFLINE_ENV.items() if k not in os.environ}, **(extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(args: list[str], cwd: Path, env: dict[str, str] | None = None, echo: bool = False) -> str:
    """Run a dvc command (the venv's); returns its output. echo=True streams it to stdout as it comes."""
    exe = Path(sys.executable).parent / "dvc"
    cmd = [str(exe) if exe.exists() else "dvc", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env or venv_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
    output = "".join(lines)
    if proc.wait() != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {cwd} (exit {proc.returncode}):\n{output[-6000:]}")
    return output


def repro(workdir: Path, force: bool = False, stages: list[str] | None = None) -> dict[str, Any]:
    """`dvc repro` in workdir under one MLflow parent run (stage runs nest via $DESTA_PARENT_RUN_ID)."""
    from desta.config import load_params
    from desta.tracking import log_pipeline_outputs, parent_run

    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        params = load_params("params.yaml")
        with parent_run(params, "dvc-repro", tags={"desta.workdir": str(workdir.resolve())}) as tracker:
            start = time.perf_counter()
            output = dvc(["repro", *(["--force"] if force else []), *(stages or [])], Path.cwd(), echo=True)
            wall = time.perf_counter() - start
            tracker.log_metrics({"pipeline/wall_s": wall})
            log_pipeline_outputs(params, tracker)
        return {"workdir": str(workdir), "wall_s": round(wall, 1), "parent_run_id": tracker.run_id,
                "ran": [ln.split("'")[1] for ln in output.splitlines() if ln.startswith("Running stage")]}
    finally:
        os.chdir(cwd)


def configure_remote(workdir: Path, params: Params, url: str | None = None) -> dict[str, str]:
    """Default DVC remote `storage` = pipeline.dvc_remote (or url), endpoint from tracking.s3_endpoint_url or
    $AWS_ENDPOINT_URL. Credentials are never written: DVC reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."""
    url = url or params.pipeline.dvc_remote
    if not url:
        raise ParamsError("params.yaml pipeline.dvc_remote: not set; give an s3://bucket/prefix (or --url)")
    endpoint = params.tracking.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    dvc(["remote", "add", "--force", "--default", "storage", url], workdir)
    if endpoint:
        dvc(["remote", "modify", "storage", "endpointurl", endpoint], workdir)
    return {"remote": "storage", "url": url, "endpointurl": endpoint or "(AWS default)"}


def _apply_in_place(root: Path, profile: str) -> None:
    params = root / "params.yaml"
    raw = merged_params(params, profile, root)
    shutil.copy2(params, params.with_suffix(".yaml.bak"))
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"{params}: merged with profile {profile!r} (original saved as params.yaml.bak)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m desta.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("repro", help="dvc repro under one MLflow parent run")
    rp.add_argument("--profile", default=None, help="overlay from infra/profiles/ (e.g. smoke) or a YAML path")
    rp.add_argument("--workdir", type=Path, default=None, help="run in a copy of the project at DIR")
    rp.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    rp.add_argument("stages", nargs="*", help="only these stages (and what they depend on)")
    pp = sub.add_parser("params", help="print params.yaml merged with a profile")
    pp.add_argument("--profile", required=True)
    rm = sub.add_parser("remote", help="configure the DVC remote from pipeline.dvc_remote (+ S3 endpoint)")
    rm.add_argument("--url", default=None, help="override pipeline.dvc_remote")
    ab = sub.add_parser("ablation", help="who writes the targets: train + evaluate each arm on the same clips "
                                         "(desta/ablation.py)")
    ab.add_argument("--profile", default=None, help="overlay from infra/profiles/ (e.g. smoke) or a YAML path")
    ab.add_argument("--arms", nargs="+", default=["self", "templated", "mix"],
                    help="self | templated | mix | other-llm (default: self templated mix)")
    ab.add_argument("--other-llm", default=None, help="model-store reference of the other-LLM arm's generator")
    ab.add_argument("--workdir", type=Path, default=Path("data/ablation"), help="outputs (default data/ablation)")
    ab.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path.cwd()
    try:
        if args.command == "params":
            print(yaml.safe_dump(merged_params(root / "params.yaml", args.profile, root), sort_keys=False), end="")
            return 0
        if args.command == "ablation":
            from desta.ablation import run_ablation

            base = deep_merge(merged_params(root / "params.yaml", args.profile, root), parse_overrides(args.overrides))
            result = run_ablation(base, args.workdir, args.arms, args.other_llm)
            print(yaml.safe_dump(result, sort_keys=False), end="")
            return 0
        if args.command == "remote":
            from desta.config import load_params

            print(yaml.safe_dump(configure_remote(root, load_params(root / "params.yaml"), args.url)), end="")
            return 0
        workdir = root
        if args.workdir is not None:
            workdir = make_workspace(root, args.workdir.resolve(), args.profile)
        elif args.profile:
            _apply_in_place(root, args.profile)
        result = repro(workdir, force=args.force, stages=args.stages)
    except (ParamsError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(result, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
