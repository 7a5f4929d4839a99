#!/usr/bin/env bash
# A private Postgres cluster for the benchmark (issue 30), beside the machine's own:
# its own data directory and port, `pg_stat_statements` loaded so that the bench
# prints where Postgres's time goes statement by statement, and either Postgres's
# default configuration or the "tuned" one of deploy/README.md, applied through
# ALTER SYSTEM. Nothing of the machine's cluster is touched.
#
#   scripts/bench-postgres.sh start [default|tuned]   # prints the URL to bench against
#   scripts/bench-postgres.sh stop
#
# then, for example:
#   REVERIFY_TEST_POSTGRES_URL=$(scripts/bench-postgres.sh start tuned) \
#     scripts/bench.sh --only peak-rss1m
#
# Environment: REVERIFY_BENCH_PG_PORT (default 5433), REVERIFY_BENCH_PG_DIR (default
# /var/tmp/reverify-bench-pg). Runs as root (the cluster runs as the `postgres` user)
# or as the user that owns the data directory.
set -euo pipefail

port=${REVERIFY_BENCH_PG_PORT:-5433}
dir=${REVERIFY_BENCH_PG_DIR:-/var/tmp/reverify-bench-pg}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "bench-postgres: no Postgres server binaries under /usr/lib/postgresql" >&2; exit 1; }

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
psql_() { psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

stop() {
  if [ -f "$dir/postmaster.pid" ]; then as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null; fi
}

case "${1:-}" in
  start)
    flavour=${2:-default}
    case "$flavour" in default|tuned) ;; *) echo "bench-postgres: flavour must be default or tuned, not '$flavour'" >&2; exit 2 ;; esac
    stop
    # a fresh cluster every time: the figures start from empty tables and caches
    rm -rf "$dir"
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
    as_pg "$bin/initdb" -D "$dir" -U postgres -A trust --no-sync >/dev/null
    # the only change to the defaults in both flavours: pg_stat_statements, which
    # costs a few percent and tells the bench where the time goes
    {
      echo "port = $port"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$dir'"
      echo "shared_preload_libraries = 'pg_stat_statements'"
      echo "logging_collector = off"
    } | as_pg tee -a "$dir/postgresql.conf" >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w start >/dev/null
    psql_ -c "CREATE EXTENSION pg_stat_statements"
    if [ "$flavour" = tuned ]; then
      # deploy/README.md, "Running Postgres for reverify": memory for the hot
      # tables' working set, and autovacuum that keeps up with a queue table
      psql_ <<'SQL'
ALTER SYSTEM SET shared_buffers = '2GB';
ALTER SYSTEM SET effective_cache_size = '12GB';
ALTER SYSTEM SET work_mem = '16MB';
ALTER SYSTEM SET maintenance_work_mem = '256MB';
ALTER SYSTEM SET max_wal_size = '4GB';
ALTER SYSTEM SET checkpoint_completion_target = 0.9;
ALTER SYSTEM SET wal_compression = 'on';
ALTER SYSTEM SET autovacuum_naptime = '10s';
ALTER SYSTEM SET autovacuum_vacuum_cost_limit = 2000;
SQL
      as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w restart >/dev/null
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    stop
    ;;
  *)
    echo "usage: $0 start [default|tuned] | stop" >&2
    exit 2
    ;;
esac
