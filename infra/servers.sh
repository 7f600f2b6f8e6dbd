#!/usr/bin/env bash
# The compose services' roles on loopback, without Docker: S3 (rclone serve s3), MLflow (SQLite + S3 artifacts),
# Prefect server. State (data, logs, pid files) under .servers/ in the project root.
#   bash infra/servers.sh start     # prints the env to export
#   bash infra/servers.sh stop
# Ports: S3 9000, MLflow 5000, Prefect 4200 (override with S3_PORT, MLFLOW_PORT, PREFECT_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DIR=.servers
S3_PORT=${S3_PORT:-9000} MLFLOW_PORT=${MLFLOW_PORT:-5000} PREFECT_PORT=${PREFECT_PORT:-4200}
[ -f infra/.env ] && set -a && . infra/.env && set +a
: "${AWS_ACCESS_KEY_ID:=desta}" "${AWS_SECRET_ACCESS_KEY:=desta-local-secret-0123}" "${MLFLOW_BUCKET:=mlflow-artifacts}"
: "${DVC_BUCKET:=desta-dvc}" "${DATA_BUCKET:=desta-data}"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=us-east-1 DO_NOT_TRACK=true \
       MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false PREFECT_SERVER_ANALYTICS_ENABLED=false

wait_http() {  # url, name
  for _ in $(seq 1 120); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "$2 did not come up; see $DIR/$2.log" >&2; return 1
}

start() {
  mkdir -p "$DIR/s3/$MLFLOW_BUCKET" "$DIR/s3/$DVC_BUCKET" "$DIR/s3/$DATA_BUCKET" "$DIR/prefect"
  "$BIN/rclone" serve s3 --config /dev/null --addr "127.0.0.1:$S3_PORT" \
    --auth-key "$AWS_ACCESS_KEY_ID,$AWS_SECRET_ACCESS_KEY" "$DIR/s3" >"$DIR/s3.log" 2>&1 &
  echo $! > "$DIR/s3.pid"
  MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --workers 1 --backend-store-uri "sqlite:///$PWD/$DIR/mlflow.db" \
    --artifacts-destination "s3://$MLFLOW_BUCKET/" >"$DIR/mlflow.log" 2>&1 &
  echo $! > "$DIR/mlflow.pid"
  PREFECT_HOME="$PWD/$DIR/prefect" "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" \
    >"$DIR/prefect.log" 2>&1 &
  echo $! > "$DIR/prefect.pid"
  wait_http "http://127.0.0.1:$MLFLOW_PORT/health" mlflow
  wait_http "http://127.0.0.1:$PREFECT_PORT/api/health" prefect
  cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
ENV
}

stop() {
  for name in prefect mlflow s3; do
    if [ -f "$DIR/$name.pid" ]; then
      pid=$(cat "$DIR/$name.pid")
      kill -INT "$pid" 2>/dev/null || true
      sleep 2; kill -TERM "$pid" 2>/dev/null || true
      rm -f "$DIR/$name.pid"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
