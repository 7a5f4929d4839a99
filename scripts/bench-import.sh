#!/usr/bin/env bash
# Import benchmark (issue 2): generates a CSV of 1,000,000 users, each with a refresh
# token, and times `users import` into a fresh SQLite file and a fresh database on
# the Postgres at REVERIFY_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# Prints import_1m_sqlite, import_1m_postgres (seconds) and import_peak_rss (MB).
# Goals: under 60 s each, under 100 MB. Extra arguments go to the command
# (e.g. --rows 100000, --skip-postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --quiet
exec target/release/reverify-bench import "$@"
