#!/usr/bin/env bash
# The MLflow tracking server a team runs: PostgreSQL as the backend store (runs, metrics,
# registry), proxied artifact storage (`--artifacts-destination`), so clients talk HTTP
# only and never need the artifact store's paths or credentials, and MLflow's basic-auth
# app: every request needs a user and password, and each user sees and changes only what
# they are granted (docs/security.md).
#
#   scripts/team-server.sh start     # init (first time) and start PostgreSQL + mlflow server
#   scripts/team-server.sh stop
#   scripts/team-server.sh status
#   scripts/team-server.sh user NAME writer|promoter|reader   # create (or re-grant) a user;
#                                    # its password from USER_PASSWORD (or asked for)
#
# Settings (environment):
#   MLFLOW_ADMIN_USERNAME=admin       the server's admin (creates users, grants roles)
#   MLFLOW_ADMIN_PASSWORD=...         its password (required: at least 12 characters, not
#   MLFLOW_ADMIN_PASSWORD_FILE=path   MLflow's old default), or a file holding it that only
#                                     its owner can read (chmod 600)
#   DATA=./team-server          state: PostgreSQL cluster, logs, pid files, artifacts, auth.ini
#   HOST=127.0.0.1 PORT=5000    where the tracking server listens (0.0.0.0 for a team LAN)
#   ALLOWED_HOSTS=...           Host headers it answers (default 127.0.0.1:PORT,localhost:PORT
#                               and HOST:PORT); on a LAN add the name clients use, e.g.
#                               mlflow.team.lan:5000 (DNS-rebinding protection)
#   CORS_ORIGINS=...            browser origins allowed to call the API (MLflow's default:
#                               localhost origins)
#   PGPORT=5433                 PostgreSQL port (listens on 127.0.0.1 only)
#   DB_PASSWORD=mlflow          password of the database role `mlflow` (set your own)
#   ARTIFACTS=$DATA/artifacts   artifact store: a folder, or s3://bucket/path, gs://...
#                               (the server holds those credentials, not the clients)
#   PGDATA_DIR=$DATA/pg         the cluster folder (must be writable by `postgres` if root)
#   WORKERS=2                   mlflow server workers
#   AUTH_CACHE_TTL_S=60         seconds a worker trusts a user and password it has checked
#                               (MLflow's auth_cache_ttl_seconds; 0: off): otherwise every
#                               request pays a password-hash check, tens of ms of CPU by
#                               design. A changed password, admin flag or deleted user
#                               counts at once in the worker that changed it, in the other
#                               workers within this time
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false   MLflow's job runners (GenAI jobs, four extra
#                               processes): off, as nothing of this project uses them
#   EXPERIMENT=mnist-mlops MODEL=mnist-digits   what `user` grants on
# Needs PostgreSQL's server binaries (Debian: apt-get install postgresql) and
# `pip install -e '.[server]'` (psycopg2, Flask-WTF for basic-auth) in the environment that
# runs `mlflow`; `user` runs `mnist-mlops team user` as `python -m mnist_mlops` (PYTHON=python3).
set -euo pipefail
DATA="${DATA:-./team-server}"
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
HOST="${HOST:-127.0.0.1}"; PORT="${PORT:-5000}"; PGPORT="${PGPORT:-5433}"
DB_PASSWORD="${DB_PASSWORD:-mlflow}"; WORKERS="${WORKERS:-2}"
AUTH_CACHE_TTL_S="${AUTH_CACHE_TTL_S:-60}"
ARTIFACTS="${ARTIFACTS:-$DATA/artifacts}"
PGDATA_DIR="${PGDATA_DIR:-$DATA/pg}"
MLFLOW="${MLFLOW:-mlflow}"; PYTHON="${PYTHON:-python3}"
ADMIN_USER="${MLFLOW_ADMIN_USERNAME:-admin}"
ALLOWED_HOSTS="${ALLOWED_HOSTS:-127.0.0.1:$PORT,localhost:$PORT,$HOST:$PORT}"
AUTH_INI="$DATA/auth.ini"
URL="http://$([ "$HOST" = 0.0.0.0 ] && echo 127.0.0.1 || echo "$HOST"):$PORT"

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

die() { echo "team-server.sh: $*" >&2; exit 1; }

admin_password() {  # from MLFLOW_ADMIN_PASSWORD_FILE (owner-only) or MLFLOW_ADMIN_PASSWORD
  local pw="${MLFLOW_ADMIN_PASSWORD:-}" f="${MLFLOW_ADMIN_PASSWORD_FILE:-}"
  if [ -n "$f" ]; then
    [ -r "$f" ] || die "MLFLOW_ADMIN_PASSWORD_FILE=$f cannot be read"
    [ "$(stat -c %u "$f")" = "$(id -u)" ] && [ "$(( 0$(stat -c %a "$f") & 077 ))" = 0 ] \
      || die "$f must belong to $(id -un) and be readable by it alone: chmod 600 $f"
    pw="$(head -n1 "$f")"
  fi
  [ -n "$pw" ] || die "no admin password: set MLFLOW_ADMIN_PASSWORD or MLFLOW_ADMIN_PASSWORD_FILE (a file only you can read)"
  [ "$pw" != password1234 ] || die "refusing MLflow's old default admin password (password1234): set MLFLOW_ADMIN_PASSWORD to a password of your own"
  [ "${#pw}" -ge 12 ] || die "the admin password must have at least 12 characters"
  printf '%s' "$pw"
}

write_auth_config() {  # owner-only: it holds the database password
  ( umask 077
    [ -s "$DATA/secret_key" ] || "$PYTHON" -c "import secrets; print(secrets.token_hex(32))" >"$DATA/secret_key"
    # NO_PERMISSIONS: a user sees and changes nothing until granted a role (`user`), so an
    # account created for one purpose never reads or writes the rest (least privilege).
    cat >"$AUTH_INI" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = postgresql+psycopg2://mlflow:$DB_PASSWORD@127.0.0.1:$PGPORT/mlflow_auth
admin_username = $ADMIN_USER
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
auth_cache_ttl_seconds = $AUTH_CACHE_TTL_S
INI
  )
  chmod 600 "$AUTH_INI" "$DATA/secret_key"
}

admin_ok() {  # the admin's credentials work (the admin user is created at the first start only)
  ADMIN_PW="$1" "$PYTHON" -c "
import base64, os, sys, urllib.request
auth = base64.b64encode(f'{sys.argv[2]}:{os.environ[\"ADMIN_PW\"]}'.encode()).decode()
req = urllib.request.Request(f'{sys.argv[1]}/api/2.0/mlflow/users/get?username={sys.argv[2]}',
                             headers={'Authorization': f'Basic {auth}'})
urllib.request.urlopen(req, timeout=30)" "$URL" "$ADMIN_USER" >/dev/null 2>&1
}

start() {
  [[ "$AUTH_CACHE_TTL_S" =~ ^[0-9]+$ ]] \
    || die "AUTH_CACHE_TTL_S must be a whole number of seconds (0 turns the cache off), not '$AUTH_CACHE_TTL_S'"
  local admin_pw; admin_pw="$(admin_password)" || exit 1
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
  # the users and their grants: a database of their own in the same cluster
  if ! "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U mlflow -d postgres -tAc \
       "SELECT 1 FROM pg_database WHERE datname='mlflow_auth'" | grep -q 1; then
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U mlflow mlflow_auth
  fi
  write_auth_config
  local cors=(); [ -z "${CORS_ORIGINS:-}" ] || cors=(--cors-allowed-origins "$CORS_ORIGINS")
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
  MLFLOW_AUTH_CONFIG_PATH="$AUTH_INI" MLFLOW_AUTH_ADMIN_USERNAME="$ADMIN_USER" \
  MLFLOW_AUTH_ADMIN_PASSWORD="$admin_pw" MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$DATA/secret_key")" \
  nohup "$MLFLOW" server --app-name basic-auth --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    --backend-store-uri "postgresql+psycopg2://mlflow:$DB_PASSWORD@127.0.0.1:$PGPORT/mlflow" \
    --artifacts-destination "$ARTIFACTS" --serve-artifacts \
    --allowed-hosts "$ALLOWED_HOSTS" "${cors[@]}" \
    >"$DATA/mlflow.log" 2>&1 &
  echo $! >"$DATA/mlflow.pid"
  for _ in $(seq 120); do
    if "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
         "$URL/health" 2>/dev/null; then
      if ! admin_ok "$admin_pw"; then
        stop >/dev/null
        die "the server's admin user $ADMIN_USER exists with another password: set MLFLOW_ADMIN_PASSWORD to it (the password given at the first start only creates the admin)"
      fi
      echo "MLflow tracking server on $URL (basic-auth, admin $ADMIN_USER; PostgreSQL on 127.0.0.1:$PGPORT, artifacts in $ARTIFACTS)"
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
    echo "mlflow server running (pid $(cat "$DATA/mlflow.pid")) on $URL"
  else
    echo "mlflow server not running"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  user)
    [ $# -eq 3 ] || { echo "usage: $0 user NAME writer|promoter|reader" >&2; exit 2; }
    pw="${USER_PASSWORD:-}"
    if [ -z "$pw" ]; then read -rsp "password for $2: " pw; echo >&2; fi
    admin_pw="$(admin_password)" || exit 1
    MLFLOW_TRACKING_USERNAME="$ADMIN_USER" MLFLOW_TRACKING_PASSWORD="$admin_pw" USER_PASSWORD="$pw" \
      "$PYTHON" -m mnist_mlops team user "$URL" "$2" "$3" \
      --experiment "${EXPERIMENT:-mnist-mlops}" --model "${MODEL:-mnist-digits}" ;;
  *) echo "usage: $0 start|stop|status|user NAME ROLE" >&2; exit 2 ;;
esac
