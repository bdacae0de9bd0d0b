#!/usr/bin/env bash
# A real distributed Airflow on this machine: CeleryExecutor, Redis broker, PostgreSQL metadata DB and
# Celery result backend, one api-server, one scheduler, one dag-processor and two Celery workers with
# distinct hostnames. Every process runs in its own process group and is stopped by its recorded id.
#
#   deploy/celery-local.sh start    migrate the metadata DB, start everything, wait until healthy
#   deploy/celery-local.sh stop     stop every process this script started (by pid file), then clean up
#   deploy/celery-local.sh status   list the processes and their state
#
# Settings (environment; defaults in brackets):
#   CELERY_LOCAL_STATE        folder for AIRFLOW_HOME, logs, pid files [$CONTRACT_EXTRACTS_HOME/celery-local]
#   CELERY_LOCAL_DB           PostgreSQL database for Airflow metadata and Celery results
#                             [contract_extracts_celery]; created when missing
#   CELERY_LOCAL_PG           PostgreSQL server URL without database [postgresql+psycopg://postgres@127.0.0.1:5432]
#   CELERY_LOCAL_REDIS        Redis broker URL without db number [redis://127.0.0.1:6379]
#   CELERY_LOCAL_REDIS_DB     Redis database number [5]
#   CELERY_LOCAL_PORT         api-server port on 127.0.0.1 [8080]
#   CELERY_LOCAL_WORKERS      worker names, space-separated [worker-a worker-b]
#   CELERY_LOCAL_CONCURRENCY  task slots per worker [1]
# Anything else (CONTRACT_EXTRACTS_*, AIRFLOW_CONN_*, AIRFLOW__*) is passed through; by default it uses
# the state that `make demo` leaves in .state/ (keys, demo contracts, the SQLite demo source).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${VENV_BIN:-$REPO/.venv/bin}"
export PATH="$VENV_BIN:$PATH"
unset PYTHONDONTWRITEBYTECODE  # let Python cache bytecode: every task process imports Airflow

export CONTRACT_EXTRACTS_HOME="${CONTRACT_EXTRACTS_HOME:-$REPO/.state}"
STATE="${CELERY_LOCAL_STATE:-$CONTRACT_EXTRACTS_HOME/celery-local}"
DB="${CELERY_LOCAL_DB:-contract_extracts_celery}"
PG="${CELERY_LOCAL_PG:-postgresql+psycopg://postgres@127.0.0.1:5432}"
REDIS="${CELERY_LOCAL_REDIS:-redis://127.0.0.1:6379}"
REDIS_DB="${CELERY_LOCAL_REDIS_DB:-5}"
PORT="${CELERY_LOCAL_PORT:-8080}"
WORKERS="${CELERY_LOCAL_WORKERS:-worker-a worker-b}"
CONCURRENCY="${CELERY_LOCAL_CONCURRENCY:-1}"
PIDS="$STATE/pids"
LOGS="$STATE/logs"

die() { echo "celery-local: $*" >&2; exit 1; }
[[ "$DB" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "CELERY_LOCAL_DB must be a plain lower-case identifier"
[[ "$REDIS_DB" =~ ^[0-9]{1,2}$ ]] || die "CELERY_LOCAL_REDIS_DB must be a number"
[[ "$PORT" =~ ^[0-9]{2,5}$ ]] || die "CELERY_LOCAL_PORT must be a port number"

airflow_env() {
  local base="http://127.0.0.1:$PORT"
  export AIRFLOW_HOME="$STATE/airflow"
  export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$PG/$DB"
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="$PG/$DB"   # psycopg 3 serves async too (no asyncpg)
  export AIRFLOW__CELERY__BROKER_URL="$REDIS/$REDIS_DB"
  export AIRFLOW__CELERY__RESULT_BACKEND="db+$PG/$DB"
  export AIRFLOW__CELERY__WORKER_CONCURRENCY="$CONCURRENCY"
  export AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=airflow_glue.celery_config.CELERY_CONFIG  # GX once per worker
  export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$PORT" AIRFLOW__API__BASE_URL="$base"
  export AIRFLOW__API__WORKERS=1
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$base/execution/"
  # Shared by every component (tokens the scheduler signs must verify in the api-server); never printed.
  export AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY
  AIRFLOW__API_AUTH__JWT_SECRET="$(sed -n 1p "$STATE/secrets")"
  AIRFLOW__API__SECRET_KEY="$(sed -n 2p "$STATE/secrets")"
  export AIRFLOW__CORE__HOSTNAME_CALLABLE=airflow_glue.hostname.worker_hostname
  export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$REPO/dags}"
  export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW__CORE__PLUGINS_FOLDER:-$REPO/plugins}"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-8}"
  export GX_ANALYTICS_ENABLED=false
  # The project's own settings: by default the demo state of `make demo` (its ledger holds the demo approvals).
  # Production keeps the ledger in PostgreSQL: set CONTRACT_EXTRACTS_LEDGER_URL=$PG/<db> (and approve there).
  export CONTRACT_EXTRACTS_CONFIG_DIR="${CONTRACT_EXTRACTS_CONFIG_DIR:-$CONTRACT_EXTRACTS_HOME/demo/configs}"
  export CONTRACT_EXTRACTS_MASTER_KEY_FILE="${CONTRACT_EXTRACTS_MASTER_KEY_FILE:-$CONTRACT_EXTRACTS_HOME/keys/master.key}"
  export CONTRACT_EXTRACTS_SIGNING_KEY_FILE="${CONTRACT_EXTRACTS_SIGNING_KEY_FILE:-$CONTRACT_EXTRACTS_HOME/keys/sender-signing.key}"
  export AIRFLOW_CONN_DEMO_CLAIMS="${AIRFLOW_CONN_DEMO_CLAIMS:-sqlite:///$CONTRACT_EXTRACTS_HOME/demo/claims.sqlite}"
}

# launch NAME CMD...: own session/process group (setsid), stdin closed, pid recorded before anything else.
launch() {
  local name="$1"; shift
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# A process counts as alive while its group exists, or while it exists itself: right after `launch` the child may
# not have called setsid yet, so its group does not exist for a moment (a start-up race seen once in CI).
alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }

# show_log NAME: the end of a component's log on stderr, so a failed start explains itself even where the log
# file is gone by the time anyone reads the output (a CI machine).
show_log() {
  echo "celery-local: last lines of $LOGS/$1.log:" >&2
  # Lines naming a password (the simple auth manager prints generated ones) stay in the private log.
  tail -n "${CELERY_LOCAL_LOG_TAIL:-40}" "$LOGS/$1.log" 2>/dev/null | grep -iv 'password' | sed 's/^/  | /' >&2 || true
}
exited() { show_log "$1"; die "$1 exited during start-up; see $LOGS/$1.log"; }

wait_healthy() {
  local url="http://127.0.0.1:$PORT/api/v2/monitor/health" deadline=$((SECONDS + ${1:-120}))
  while (( SECONDS < deadline )); do
    for f in "$PIDS"/*.pid; do
      alive "$(cat "$f")" || exited "$(basename "$f" .pid)"
    done
    if python -c "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('$url', timeout=2).status == 200 else 1)" \
        2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  show_log api-server
  die "api-server not healthy after ${1:-120}s; see $LOGS/api-server.log"
}

start() {
  mkdir -p "$PIDS" "$LOGS" "$STATE/airflow"
  chmod 700 "$STATE"
  if compgen -G "$PIDS/*.pid" >/dev/null; then
    die "already started (pid files in $PIDS); run '$0 stop' first"
  fi
  [[ -s "$STATE/secrets" ]] || (umask 077; python -c "import secrets as s; print(s.token_urlsafe(48)); print(s.token_urlsafe(48))" \
    >"$STATE/secrets")
  airflow_env
  # A failed start stops whatever it had started.
  trap 'echo "celery-local: start failed; stopping what was started" >&2; stop' EXIT
  python - "$PG" "$DB" <<'EOF'
import sys
import sqlalchemy as sa
server, name = sys.argv[1], sys.argv[2]
engine = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
engine.dispose()
EOF
  echo "celery-local: migrating the metadata database $DB ..."
  airflow db migrate >"$LOGS/db-migrate.log" 2>&1 || { show_log db-migrate; die "airflow db migrate failed; see $LOGS/db-migrate.log"; }
  launch api-server airflow api-server
  launch scheduler airflow scheduler
  launch dag-processor airflow dag-processor
  local port_offset=0
  for w in $WORKERS; do
    [[ "$w" =~ ^[a-z0-9-]{1,40}$ ]] || die "worker name '$w': use lower-case letters, digits and '-'"
    # Each worker: its own Celery node name, its own task-instance hostname, its own log-server port.
    CONTRACT_EXTRACTS_WORKER_NAME="$w" AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((PORT + 100 + port_offset)) \
      launch "celery-$w" airflow celery worker --celery-hostname "$w@%h" --concurrency "$CONCURRENCY" \
      --without-gossip --without-mingle
    port_offset=$((port_offset + 1))
  done
  wait_healthy "${CELERY_LOCAL_START_TIMEOUT:-120}"
  trap - EXIT
  echo "celery-local: running. UI and API: http://127.0.0.1:$PORT  (logs: $LOGS)"
  echo "celery-local: workers: $WORKERS; broker $REDIS/$REDIS_DB; metadata + results: database $DB"
}

stop() {
  [[ -d "$PIDS" ]] || { echo "celery-local: nothing to stop"; return 0; }
  local f pid name
  # Workers first (warm shutdown finishes the task in hand), then the rest.
  for f in "$PIDS"/celery-*.pid "$PIDS"/*.pid; do
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"; name="$(basename "$f" .pid)"
    [[ "$pid" =~ ^[0-9]+$ ]] || { rm -f "$f"; continue; }
    if alive "$pid"; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for f in "$PIDS"/*.pid; do
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"; name="$(basename "$f" .pid)"
    local deadline=$((SECONDS + ${CELERY_LOCAL_STOP_TIMEOUT:-30}))
    while alive "$pid" && (( SECONDS < deadline )); do sleep 0.5; done
    if alive "$pid"; then
      echo "celery-local: $name (group $pid) did not stop on SIGTERM; sending SIGKILL" >&2
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
    rm -f "$f"
  done
  echo "celery-local: stopped"
}

status() {
  local f
  for f in "$PIDS"/*.pid; do
    [[ -f "$f" ]] || { echo "celery-local: not running"; return 0; }
    if alive "$(cat "$f")"; then echo "running  $(basename "$f" .pid) (group $(cat "$f"))"
    else echo "stopped  $(basename "$f" .pid)"; fi
  done
}

# Sourced (by the tests of its process handling), it only defines the functions.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
