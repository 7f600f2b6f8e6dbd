"""The paper's ablation in one command: who writes the training targets? Arms share the clips (one `desta prepare`),
the training steps and the seed; each arm runs generate -> validate -> train -> evaluate on its own targets:

  self       the backbone answers pool prompts from the seed descriptions (the paper's method, the default)
  templated  answers filled in from the clip's labels (desta/selfgen/templated.py): task-specific targets
  mix        both in one generated set
  other-llm  another instruct LLM writes the targets (--other-llm REF: any model-store reference)

    python -m desta.pipeline ablation [--profile smoke] [--arms self templated mix] [--other-llm REF]
                                      [--workdir data/ablation] [-S key=value ...]

Writes <workdir>/ablation.{md,csv,json,png}: one row per arm (perception on held-out attributes, instruction
following of the audio model and of its backbone on the same instructions, the forgetting rate, text-only
retention, validation loss, audio_gap), with p-values (accuracy vs chance; each arm's instruction following vs the
`self` arm's on the same items, exact McNemar). MLflow: one parent run `ablation` with a child run per arm, each
holding the arm's stage runs and the table's metrics (compare the children in the MLflow UI).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from contextlib import contextmanager
from math import comb
from pathlib import Path
from typing import Any

from desta.config import Params, deep_merge, params_from_dict
from desta.stages import stage_function

log = logging.getLogger(__name__)

ARMS: dict[str, dict[str, Any]] = {
    "self": {"target_sources": ["llm"]},
    "templated": {"target_sources": ["templated"]},
    "mix": {"target_sources": ["llm", "templated"]},
    "other-llm": {"target_sources": ["llm"], "allow_different_generator": True},  # + generator: --other-llm
}
ARM_STAGES = ("generate", "validate", "train", "evaluate")
# table column -> (source file, key): eval/metrics.json or model/train_metrics.json
COLUMNS: dict[str, tuple[str, str]] = {
    "perception_mcq": ("eval", "heldout/accuracy"),
    "perception_mcq_p": ("eval", "heldout/accuracy_p"),
    "perception_choice": ("eval", "heldout/choice_accuracy"),
    "perception_choice_p": ("eval", "heldout/choice_accuracy_p"),
    "perception_open": ("eval", "heldout/open_accuracy"),
    "perception_open_p": ("eval", "heldout/open_accuracy_p"),
    "if_rate": ("eval", "heldout/ifeval_following_rate"),
    "backbone_if_rate": ("eval", "heldout/backbone_ifeval_following_rate"),
    "forgetting": ("eval", "heldout/ifeval_forgetting_rate"),
    "retention": ("eval", "retention/ifeval_following_rate"),
    "retention_forgetting": ("eval", "retention/forgetting_rate"),
    "val_loss": ("train", "final_val_loss"),
    "step0_val_loss": ("train", "step0_val_loss"),
    "audio_gap": ("train", "final_audio_gap"),
}


def arm_params(base: dict[str, Any], arm: str, workdir: Path, other_llm: str | None) -> Params:
    """The arm's settings: the base params with its target sources and its own output folders (manifests shared)."""
    if arm not in ARMS:
        raise ValueError(f"unknown ablation arm {arm!r}; arms are {', '.join(ARMS)}")
    generate = dict(ARMS[arm])
    if arm == "other-llm":
        if not other_llm:
            raise ValueError("arm other-llm needs --other-llm REF (a second instruct LLM in the model store; the "
                             "offline demo ships only SmolLM2-135M-Instruct, the backbone itself)")
        generate["generator"] = other_llm
    root = workdir / "arms" / arm
    paths = {k: str(root / k) for k in ("generated", "validation", "checkpoints", "model", "eval")}
    return params_from_dict(deep_merge(base, {"paths": paths, "generate": generate}), f"ablation arm {arm}")


def shared_params(base: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Base params whose shared inputs (raw corpus, manifests) live under the ablation's workdir."""
    return deep_merge(base, {"paths": {"raw": str(workdir / "raw"), "manifests": str(workdir / "manifests")}})


def row_for(arm: str, params: Params) -> dict[str, Any]:
    """One table row from the arm's metrics.json and train_metrics.json."""
    files = {"eval": Path(params.paths.eval) / "metrics.json", "train": Path(params.paths.model) / "train_metrics.json"}
    data = {k: json.loads(p.read_text()) if p.is_file() else {} for k, p in files.items()}
    return {"arm": arm, **{col: data[src].get(key) for col, (src, key) in COLUMNS.items()}}


def followed_by_item(params: Params) -> dict[str, float]:
    """The audio model's instruction-following verdict per held-out item (predictions/heldout.jsonl)."""
    path = Path(params.paths.eval) / "predictions" / "heldout.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r["followed"] for r in rows if r.get("runner") == "model" and r.get("followed") is not None}


def mcnemar_p(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Two-sided exact McNemar test on the items both arms answered: do their following rates differ?"""
    shared = sorted(set(a) & set(b))
    only_a = sum(1 for k in shared if a[k] and not b[k])
    only_b = sum(1 for k in shared if b[k] and not a[k])
    n = only_a + only_b
    if not shared:
        return None
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def write_table(rows: list[dict[str, Any]], out: Path) -> dict[str, str]:
    """ablation.md / .csv / .json / .png under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    cols = ["arm", *COLUMNS, "if_rate_p_vs_self"]
    with (out / "ablation.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "ablation.png")
    return {k: str(out / f"ablation.{k}") for k in ("md", "csv", "json", "png")}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: the arms side by side on the metrics in [0, 1] (perception, instruction following)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["perception_mcq", "perception_choice", "perception_open", "if_rate", "backbone_if_rate", "retention"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, r in enumerate(rows):
        ax.bar([j + i * width for j in range(len(keys))], [r.get(k) or 0.0 for k in keys], width, label=r["arm"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Who writes the targets? (DeSTA2.5 ablation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@contextmanager
def _arm_run(params: Params, arm: str):
    """The arm's MLflow child run under the ablation's parent; the arm's stage runs nest under it."""
    from desta.tracking import PARENT_ENV, StageTracker, child_run

    with child_run(params, f"arm:{arm}", tags={"desta.ablation.arm": arm}) as tracker:
        saved = os.environ.get(PARENT_ENV)
        if tracker.run_id:
            os.environ[PARENT_ENV] = tracker.run_id
        try:
            yield tracker if tracker.enabled else StageTracker(None)
        finally:
            os.environ.pop(PARENT_ENV, None) if saved is None else os.environ.__setitem__(PARENT_ENV, saved)


def run_ablation(base: dict[str, Any], workdir: Path, arms: list[str], other_llm: str | None = None
                 ) -> dict[str, Any]:
    """Prepare once, then every arm's stages in order; the table, plot and MLflow parent/children at the end."""
    from desta.tracking import parent_run

    workdir = workdir.resolve()
    shared = shared_params(base, workdir)
    per_arm = {arm: arm_params(shared, arm, workdir, other_llm) for arm in arms}  # bad arms fail before any work
    top = params_from_dict(shared, "ablation")
    rows: list[dict[str, Any]] = []
    with parent_run(top, "ablation", tags={"desta.ablation.arms": ",".join(arms)}) as parent:
        stage_function("prepare")(top)
        for arm, params in per_arm.items():
            log.info("ablation: arm %s (%s)", arm, params.generate.target_sources)
            with _arm_run(params, arm) as tracker:
                for stage in ARM_STAGES:
                    stage_function(stage)(params)
                row = row_for(arm, params)
                tracker.log_metrics({k: v for k, v in row.items() if isinstance(v, int | float)})
            rows.append(row)
        reference = followed_by_item(per_arm["self"]) if "self" in per_arm else {}
        for row in rows:
            row["if_rate_p_vs_self"] = mcnemar_p(followed_by_item(per_arm[row["arm"]]), reference) \
                if reference and row["arm"] != "self" else None
        files = write_table(rows, workdir)
        for path in files.values():
            parent.log_artifact(path, "ablation")
    print(Path(files["md"]).read_text())
    return {"workdir": str(workdir), "arms": arms, "parent_run_id": parent.run_id, **files}
