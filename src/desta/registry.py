"""Model registry: the trained model as an MLflow pyfunc, its registration, and the `champion` alias.

Run: `desta register` (the pipeline's last stage; `dvc repro register`). Logs `paths.model` as a pyfunc whose
`predict` takes a DataFrame with columns `audio` (base64-encoded WAV/FLAC bytes, or a server-side path under
tracking.serve_audio_root) and `instruction` and returns one `answer` per row, so
`mlflow models serve -m models:/desta-audio@champion --env-manager local` answers audio + instruction requests; the
logged model carries the project wheel and requires it (with its declared dependencies), so `--env-manager
virtualenv` builds a working environment too. The alias `champion` moves only when `tracking.champion_metric` in
`<paths.eval>/metrics.json` beats the current champion's value. Writes `<paths.eval>/registry.json` (the DVC out).
The frozen backbones are not copied into the model: they are resolved from the offline model store on load
(the checkpoint records their hashes and refuses mismatching ones). The served model reads audio paths only under
tracking.serve_audio_root (null: base64 bytes only); a tracking server that stays away fails the stage in one line.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from desta.config import Params
from desta.conversation import inference_messages
from desta.io_retry import RetryPolicy
from desta.tracking import mlflow_call, numeric_metrics, stage_run, tracking_uri

log = logging.getLogger(__name__)

ALIAS = "champion"
MODEL_ARTIFACT = "model"
WHEEL_ARTIFACT = "desta_wheel"  # the project wheel inside the logged model: artifacts/desta-<version>-*.whl


class RegistryError(ValueError):
    """Missing model or metrics, or a champion metric that evaluation did not produce."""


def _audio_to_path(value: str, tmp: Path, i: int, root: str | None = None) -> str:
    """The row's audio as a private temp file the model reads. `value` is base64 audio bytes or, only when the
    model was registered with tracking.serve_audio_root, a path to a regular file inside that folder (symlinks
    followed, then checked). Every refused value gets the same error, so a request cannot probe which server paths
    exist."""
    data = _file_under(value, root) if root else None
    if data is None:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            data = None
    if not data:
        allowed = f"or the path of a file under the server's audio root {root}" if root else \
            "(this model reads no server paths: tracking.serve_audio_root is null)"
        raise RegistryError(f"row {i}: column `audio` must be base64 of a WAV/FLAC/OGG/MP3 file {allowed}")
    path = tmp / f"audio-{i}.bin"
    path.write_bytes(data)
    return str(path)


def _file_under(value: str, root: str) -> bytes | None:
    """The bytes of `value` when it names a regular file inside `root`; None for anything else (outside, missing,
    a FIFO or device, unreadable), without telling which."""
    from desta.data.remote import UnsafePath, read_regular

    if len(value) > 4096 or "\0" in value:
        return None
    base = Path(root).resolve()
    target = (base / value).resolve()
    if base not in target.parents:
        return None
    try:
        return read_regular(target)
    except (OSError, UnsafePath):
        return None


def _pyfunc_class():
    """Defined lazily so `import desta.registry` does not import mlflow."""
    import mlflow.pyfunc

    class DestaAudioPyfunc(mlflow.pyfunc.PythonModel):
        """Input: DataFrame[audio: str, instruction: str]; output: DataFrame[answer: str]."""

        max_new_tokens = 128

        def load_context(self, context) -> None:
            from desta.models.audio_llm import DeSTA25AudioModel

            self.model = DeSTA25AudioModel.from_pretrained(context.artifacts["model_dir"])
            self.model.eval()
            self.audio_root = (getattr(context, "model_config", None) or {}).get("audio_root")

        def predict(self, context, model_input, params: dict[str, Any] | None = None):
            import pandas as pd

            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            missing = {"audio", "instruction"} - set(frame.columns)
            if missing:
                raise RegistryError(f"request is missing column(s) {sorted(missing)}; send columns audio, instruction")
            max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
            with tempfile.TemporaryDirectory(prefix="desta-serve-") as tmp:
                root = getattr(self, "audio_root", None)
                convs = [inference_messages(str(row.instruction), [_audio_to_path(str(row.audio), Path(tmp), i, root)])
                         for i, row in enumerate(frame.itertuples(index=False))]
                results = self.model.generate(convs, max_new_tokens=max_new)
            return pd.DataFrame({"answer": [r.text for r in results]})

    return DestaAudioPyfunc


def project_root() -> Path:
    """The source checkout this package runs from (its pyproject.toml), needed to build the wheel logged with the
    model; a clear error where desta was installed from a wheel instead."""
    import desta

    root = Path(desta.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise RegistryError(f"{root}: no pyproject.toml above the desta package; `desta register` builds the "
                            "project wheel logged with the model, so run it from a source checkout (pip install -e .)")
    return root


def build_wheel(out_dir: Path) -> Path:
    """The project's wheel (no dependencies bundled; they are its declared requirements), built offline with the
    running interpreter's setuptools, so `mlflow models serve --env-manager virtualenv` can install the model."""
    import shutil
    import subprocess
    import sys

    root, tree = project_root(), out_dir / "tree"  # a clean copy: nothing (build/, egg-info) lands in the checkout
    shutil.copytree(root / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(root / "pyproject.toml", tree / "pyproject.toml")
    readme = root / "README.md"
    (tree / "README.md").write_text(readme.read_text() if readme.is_file() else "desta\n")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out_dir),
           str(tree)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out_dir.glob("desta-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RegistryError(f"building the project wheel failed (`{' '.join(cmd)}`): {proc.stderr[-2000:]}")
    return wheels[0]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "audio"), ColSpec("string", "instruction")]),
                          outputs=Schema([ColSpec("string", "answer")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 128)]))


def read_metric(metrics_file: Path, name: str) -> float:
    """`heldout/accuracy` (or `heldout.accuracy`) from a nested or flat metrics.json."""
    if not metrics_file.is_file():
        raise RegistryError(f"{metrics_file}: not found; run `desta evaluate` first")
    flat = numeric_metrics(json.loads(metrics_file.read_text()))
    key = name.replace(".", "/")
    if key not in flat:
        raise RegistryError(f"{metrics_file}: no metric {name!r} (params.yaml tracking.champion_metric); "
                            f"available: {', '.join(sorted(flat)) or 'none'}")
    return flat[key]


def is_better(new: float, old: float | None, greater_is_better: bool) -> bool:
    return old is None or (new > old if greater_is_better else new < old)


def champion_value(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """(version, metric value) of the current champion, or (None, None) when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None, None
    value = client.get_run(mv.run_id).data.metrics.get(metric)
    return mv.version, value


def model_hashes(model_dir: Path) -> dict[str, str]:
    """Backbone hashes recorded by save_pretrained + sha256 of the trainable weights file(s)."""
    import hashlib

    out: dict[str, str] = {}
    for cfg in model_dir.glob("*.json"):
        try:
            data = json.loads(cfg.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            out.update({k: str(v) for k, v in data.items() if k.endswith("_hash")})
    for w in sorted(model_dir.glob("*.safetensors")):
        out[f"sha256:{w.name}"] = hashlib.sha256(w.read_bytes()).hexdigest()
    return out


def run_register(params: Params) -> dict[str, Any]:
    """Stage `register` (CLI, dvc.yaml, Prefect): log the pyfunc, register a new version, move `champion` only if
    the metric beats it."""
    cfg, model_dir = params.tracking, Path(params.evaluate.model or params.paths.model)
    out_file = Path(params.paths.eval) / "registry.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        result = {"registered": False, "reason": "tracking.enabled is false"}
        out_file.write_text(json.dumps(result, indent=2) + "\n")
        return result
    from desta.models.audio_llm import is_checkpoint

    if not is_checkpoint(model_dir):
        raise RegistryError(f"{model_dir}: no trained model (save_pretrained output); run `desta train` first")
    value = read_metric(Path(params.paths.eval) / "metrics.json", cfg.champion_metric)
    with stage_run(params, "register", cfg) as tracker:
        result = _log_and_register(params, tracker, model_dir, value)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    log.info("registered %s v%s; champion %s", result["model"], result["version"],
             "moved" if result["promoted"] else f"stays v{result['previous_champion']}")
    return result


def _log_and_register(params: Params, tracker, model_dir: Path, value: float) -> dict[str, Any]:
    """Each call to the server is retried while it is away (params `io:`), then fails in one line."""
    import mlflow
    from mlflow import MlflowClient

    cfg, metric = params.tracking, params.tracking.champion_metric.replace(".", "/")
    uri, policy = tracking_uri(cfg), RetryPolicy.from_config(params.io)

    def call(what: str, fn):
        return mlflow_call(fn, what, uri, policy)

    hashes = model_hashes(model_dir)
    tracker.log_metrics({metric: value})
    tracker.set_tags({f"desta.model_hash.{k}": v for k, v in hashes.items()})
    with tempfile.TemporaryDirectory(prefix="desta-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
        info = call("log the pyfunc model", lambda: mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=_pyfunc_class()(), signature=signature(),
            artifacts={"model_dir": str(model_dir), WHEEL_ARTIFACT: str(wheel)},
            pip_requirements=[f"artifacts/{wheel.name}"],  # the project itself, with its declared dependencies
            model_config={"audio_root": cfg.serve_audio_root},
            metadata={"model_hashes": hashes, "champion_metric": metric, "value": value}))
    client = MlflowClient()
    prev_version, prev_value = call("read the champion", lambda: champion_value(client, cfg.registered_model, metric))
    mv = call("register the model", lambda: mlflow.register_model(info.model_uri, cfg.registered_model))
    promoted = is_better(value, prev_value, cfg.champion_greater_is_better)
    if promoted:
        call("move the champion alias",
             lambda: client.set_registered_model_alias(cfg.registered_model, ALIAS, mv.version))
    call("tag the version", lambda: client.set_model_version_tag(cfg.registered_model, mv.version, metric, str(value)))
    return {"model": cfg.registered_model, "version": int(mv.version), "run_id": tracker.run_id,
            "model_uri": f"models:/{cfg.registered_model}/{mv.version}", "metric": metric, "value": value,
            "previous_champion": prev_version, "previous_value": prev_value, "promoted": promoted,
            "champion_uri": f"models:/{cfg.registered_model}@{ALIAS}"}
