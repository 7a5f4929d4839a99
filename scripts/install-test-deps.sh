#!/usr/bin/env bash
# Installs what the tests need beyond cargo: idempotent, quick when already there.
set -euo pipefail
need_apt=()
command -v pg_isready >/dev/null || need_apt+=(postgresql-client)
# schemathesis (scripts/schemathesis.sh) runs in a venv
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
