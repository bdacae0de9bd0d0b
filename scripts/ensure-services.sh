#!/usr/bin/env bash
# Start the local PostgreSQL, MariaDB and Redis servers the integration tests use, if they are down.
set -uo pipefail
up() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_for() { for _ in $(seq 1 30); do up "$1" && return 0; sleep 1; done; echo "service on port $1 did not start" >&2; return 1; }
if ! up 5432; then pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start; wait_for 5432; fi
if ! up 3306; then start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; wait_for 3306; fi
if ! up 6379; then redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; wait_for 6379; fi
exit 0
