#!/usr/bin/env bash
# The pipeline benchmark (issue 8): builds the release binaries (reverify and
# reverify-bench) and runs `reverify-bench`, which prints one `name: value unit`
# line per figure (throughput_postgres, throughput_sqlite, cpu_per_1k_users, peak_rss_1m,
# throughput_1m_postgres, throughput_1m_postgres_last_100k, cost_growth_1m,
# rate_fidelity, rate_max_window, latency_hiding, targeting_1m_postgres,
# api_requests_per_user_first_run, api_requests_per_user,
# throughput_click_send_postgres, throughput_click_send_sqlite,
# throughput_click_send, click_throughput, click_throughput_p99, follow_up_lag_p99_s,
# daemon_idle_cpu_percent) after a
# `machine:` line, with `# ` lines of evidence beside them.
#
# Needs Postgres at REVERIFY_TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/postgres; scripts/bench-postgres.sh starts a
# private cluster that also gives the per-statement figures) and /usr/bin/time
# (scripts/install-test-deps.sh installs it). The full run takes many minutes;
# extra arguments go to the command: --skip-1m, --size 0.1, --quick,
# --only throughput-postgres,rate,api-requests,throughput-click-send,click-throughput,
# follow-up-lag,daemon-idle.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --quiet
exec target/release/reverify-bench "$@"
