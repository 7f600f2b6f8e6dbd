"""Scheduled end-to-end retraining: serve the `retrain` flow as a deployment on params.yaml `pipeline.cron`.

    python flows/deploy.py [--params params.yaml] [--profile smoke] [--cron "0 3 * * 0"]   # blocks; Ctrl-C stops
    prefect deploy --prefect-file infra/prefect.yaml --all                                  # work-pool alternative

`serve` needs no work pool: this process polls the Prefect API (a `prefect server` or Prefect Cloud from
PREFECT_API_URL) and runs each scheduled flow run in a subprocess.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrain import load_flow_params, retrain  # noqa: E402  (flows/ is a folder of scripts, not a package)


def build_deployment(params_path: str = "params.yaml", profile: str | None = None, cron: str | None = None):
    """The RunnerDeployment (name and cron from params.yaml `pipeline:`), not yet applied or served."""
    params = load_flow_params(params_path, profile, None)
    return retrain.to_deployment(
        name=params.pipeline.deployment, cron=cron or params.pipeline.cron,
        parameters={"params_path": str(Path(params_path).resolve()), "profile": profile,
                    "workdir": str(Path(params_path).resolve().parent)},
        tags=["desta", "retrain"], description="Scheduled end-to-end retraining (docs/pipeline.md)")


def main(argv: list[str] | None = None) -> int:
    from prefect import serve

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--cron", default=None, help="override pipeline.cron")
    args = parser.parse_args(argv)
    serve(build_deployment(args.params, args.profile, args.cron))
    return 0


if __name__ == "__main__":
    sys.exit(main())
