#!/usr/bin/env bash
# Report benchmark (issue 6): fills a fresh SQLite file and a fresh Postgres database
# (REVERIFY_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)
# with 1,000,000 targets of one campaign and streams `campaign report` to /dev/null.
# Prints report_1m_seconds, report_peak_rss (VmHWM) and the resident-size samples
# taken while streaming (flat memory). Extra arguments go to the command
# (e.g. --rows 100000, --format json, --skip-postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --quiet
exec target/release/reverify-bench report "$@"
