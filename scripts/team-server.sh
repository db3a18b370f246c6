#!/usr/bin/env bash
# The MLflow tracking server a team runs: PostgreSQL as the backend store (runs, metrics,
# registry) and proxied artifact storage (`--artifacts-destination`), so clients talk HTTP
# only and never need the artifact store's paths or credentials.
#
#   scripts/team-server.sh start     # init (first time) and start PostgreSQL + mlflow server
#   scripts/team-server.sh stop
#   scripts/team-server.sh status
#
# Settings (environment):
#   DATA=./team-server          state: PostgreSQL cluster, logs, pid files, artifacts
#   HOST=127.0.0.1 PORT=5000    where the tracking server listens (0.0.0.0 for a team LAN)
#   PGPORT=5433                 PostgreSQL port (listens on 127.0.0.1 only)
#   DB_PASSWORD=mlflow          password of the database role `mlflow` (set your own)
#   ARTIFACTS=$DATA/artifacts   artifact store: a folder, or s3://bucket/path, gs://...
#                               (the server holds those credentials, not the clients)
#   PGDATA_DIR=$DATA/pg         the cluster folder (must be writable by `postgres` if root)
#   WORKERS=2                   mlflow server workers
# Needs PostgreSQL's server binaries (Debian: apt-get install postgresql) and
# `pip install -e '.[server]'` (psycopg2) in the environment that runs `mlflow`.
set -euo pipefail
DATA="${DATA:-./team-server}"
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
HOST="${HOST:-127.0.0.1}"; PORT="${PORT:-5000}"; PGPORT="${PGPORT:-5433}"
DB_PASSWORD="${DB_PASSWORD:-mlflow}"; WORKERS="${WORKERS:-2}"
ARTIFACTS="${ARTIFACTS:-$DATA/artifacts}"
PGDATA_DIR="${PGDATA_DIR:-$DATA/pg}"
MLFLOW="${MLFLOW:-mlflow}"

bindir() {
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  local d; d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$d" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 1; }
  echo "$d"
}
PGBIN="$(bindir)"
as_pg() {  # PostgreSQL refuses to run as root
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

start() {
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    mkdir -p "$PGDATA_DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$PGDATA_DIR"
    pw="$(mktemp)"; printf '%s\n' "$DB_PASSWORD" > "$pw"; chmod 644 "$pw"
    as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U mlflow --pwfile="$pw" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 >"$DATA/initdb.log"
    rm -f "$pw"
  fi
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -w -l "$PGDATA_DIR/server.log" \
    -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $PGDATA_DIR" start >/dev/null
  export PGPASSWORD="$DB_PASSWORD"
  if ! "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U mlflow -d postgres -tAc \
       "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1; then
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U mlflow mlflow
  fi
  nohup "$MLFLOW" server --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    --backend-store-uri "postgresql+psycopg2://mlflow:$DB_PASSWORD@127.0.0.1:$PGPORT/mlflow" \
    --artifacts-destination "$ARTIFACTS" --serve-artifacts \
    >"$DATA/mlflow.log" 2>&1 &
  echo $! >"$DATA/mlflow.pid"
  for _ in $(seq 120); do
    if curl -fs "http://$HOST:$PORT/health" >/dev/null 2>&1 \
       || python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "http://$HOST:$PORT/health" 2>/dev/null; then
      echo "MLflow tracking server on http://$HOST:$PORT (PostgreSQL on 127.0.0.1:$PGPORT, artifacts in $ARTIFACTS)"
      return
    fi
    kill -0 "$(cat "$DATA/mlflow.pid")" 2>/dev/null || break
    sleep 1
  done
  echo "mlflow server did not start; see $DATA/mlflow.log:" >&2
  tail -20 "$DATA/mlflow.log" >&2
  exit 1
}

stop() {
  if [ -f "$DATA/mlflow.pid" ]; then
    pkill -TERM -P "$(cat "$DATA/mlflow.pid")" 2>/dev/null || true
    kill "$(cat "$DATA/mlflow.pid")" 2>/dev/null || true
    rm -f "$DATA/mlflow.pid"
  fi
  if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -w -m fast stop >/dev/null
  fi
  echo "stopped"
}

status() {
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status || true
  if [ -f "$DATA/mlflow.pid" ] && kill -0 "$(cat "$DATA/mlflow.pid")" 2>/dev/null; then
    echo "mlflow server running (pid $(cat "$DATA/mlflow.pid")) on http://$HOST:$PORT"
  else
    echo "mlflow server not running"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
