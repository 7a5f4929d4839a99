#!/usr/bin/env bash
# Installs what the tests need beyond cargo: idempotent, quick when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
# pg_isready, and pg_dump for the raw-dump test of encrypted tokens
{ command -v pg_isready && command -v pg_dump; } >/dev/null || need_apt+=(postgresql-client)
# the SMTP server the notify and engine tests send to (src/notify/testing.rs)
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need_apt+=(python3-aiosmtpd)
# schemathesis (scripts/schemathesis.sh) runs in a venv
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
# the real Pushgateway the metrics push test pushes to (tests/telemetry.rs)
[ -x /usr/bin/prometheus-pushgateway ] || need_apt+=(prometheus-pushgateway)
# the real IMAP server the DSN mailbox tests read from (src/bounces/testing.rs); a
# private instance with a generated config, so the package's own service stays off
[ -x /usr/sbin/dovecot ] || need_apt+=(dovecot-imapd)
# promtool checks and unit-tests the alert rules (.ci/run, deploy/prometheus/); Debian
# ships it in the prometheus package
command -v promtool >/dev/null || need_apt+=(prometheus)
# GNU time measures the worker's CPU and peak RSS in `reverify-bench` (bench/tests/bench_smoke.rs)
[ -x /usr/bin/time ] || need_apt+=(time)
# systemd-analyze verifies the systemd units (tests/deploy.rs); it works without
# systemd running as PID 1
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# headless Chromium driven over WebDriver by the click-through browser test
# (tests/engine/browser.rs)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# ssh-keygen and ssh-agent: SSH signatures made and checked by OpenSSH itself, for the
# approvals' interoperability tests (src/crypto/sshsig, tests/cli/approvals.rs)
{ command -v ssh-keygen && command -v ssh-agent; } >/dev/null || need_apt+=(openssh-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# kubernetes-validate (PyPI, ships its schemas) for the offline manifest test
# (tests/deploy.rs), in a venv under target/ so that it touches no system Python;
# its PyYAML also renders the kustomize overlays (scripts/render-kustomize.py)
kv=target/kv-venv
if ! "$kv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  python3 -m venv "$kv"
  "$kv/bin/pip" install -q --disable-pip-version-check 'kubernetes-validate>=1.30'
fi
