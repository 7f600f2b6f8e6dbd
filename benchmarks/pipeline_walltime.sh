#!/usr/bin/env bash
# Wall time of `dvc repro` from scratch for the smoke profile and the default demo, each in a fresh copy of the
# project (python -m desta.pipeline repro --workdir), with the embedded MLflow store. Targets on a 2-core CPU
# machine: smoke <= 5 min, default demo <= 15 min.
#   bash benchmarks/pipeline_walltime.sh            # both
#   bash benchmarks/pipeline_walltime.sh smoke      # one: smoke | default
# Writes benchmarks/out/pipeline_walltime.tsv (profile, seconds, target, ratio) and the logs next to it.
# KEEP_WORKDIR=1 keeps each run's copy (data/eval/metrics.json, data/model/train_metrics.json, mlflow.db).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=benchmarks/out
mkdir -p "$OUT"
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=true \
       MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false
unset MLFLOW_TRACKING_URI DESTA_PARENT_RUN_ID
profiles=("${@:-smoke default}")
read -r -a profiles <<<"${profiles[*]}"
printf 'profile\tseconds\ttarget_s\tratio\n' > "$OUT/pipeline_walltime.tsv"
for profile in "${profiles[@]}"; do
  case "$profile" in
    smoke) target=300; flag=(--profile smoke) ;;
    default) target=900; flag=() ;;
    *) echo "unknown profile $profile (smoke | default)" >&2; exit 2 ;;
  esac
  work=$(mktemp -d "${TMPDIR:-/tmp}/desta-walltime-$profile-XXXX")
  start=$(date +%s.%N)
  "$PY" -m desta.pipeline repro "${flag[@]}" --workdir "$work" >"$OUT/walltime-$profile.log" 2>&1 \
    || { echo "$profile: dvc repro failed, see $OUT/walltime-$profile.log" >&2; exit 1; }
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  ratio=$(echo "scale=2; $secs / $target" | bc)
  printf '%s\t%.0f\t%s\t%s\n' "$profile" "$secs" "$target" "$ratio" | tee -a "$OUT/pipeline_walltime.tsv"
  printf 'dvc repro %-8s %6.0f s  (target %s s, ratio %s; cores %s, load %s)\n' "$profile" "$secs" "$target" \
    "$ratio" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"
  if [ -n "${KEEP_WORKDIR:-}" ]; then echo "  kept $work"; else rm -rf "$work"; fi
done
