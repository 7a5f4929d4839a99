#!/usr/bin/env bash
# Property-based check of the sandbox against its OpenAPI document
# (openapi/sandbox.yaml) with schemathesis: with faults off, no input may make it
# answer a server error. Installs schemathesis in a venv under target/ when missing,
# starts `reverify sandbox` on a free port, runs a bounded `schemathesis run`, stops
# the sandbox. Environment: REVERIFY_BIN (default: build target/debug/reverify),
# SCHEMATHESIS_MAX_EXAMPLES (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/schemathesis-venv
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'schemathesis>=4,<5'
fi

BIN=${REVERIFY_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --quiet --bin reverify
  BIN=target/debug/reverify
fi

work=$(mktemp -d)
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
key="schemathesis-client-key"
# No reverify.toml from the caller's directory: the sandbox needs no settings.
REVERIFY_CONFIG=/dev/null "$BIN" sandbox --listen "127.0.0.1:$port" --users 20 --client-key "$key" \
  --export-users "$work/users.csv" >"$work/sandbox.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Wait for the port to answer (the export is written before it prints its address).
for _ in $(seq 1 200); do
  if grep -q "listening" "$work/sandbox.log" 2>/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/sandbox.log" >&2; exit 1; fi
  sleep 0.05
done

# A real access token, so that generated requests also reach the authenticated paths.
token=$("$VENV/bin/python" - "$work/users.csv" "$base" "$key" <<'PY'
import csv, json, sys, urllib.request
users, base, key = sys.argv[1:4]
row = next(r for r in csv.DictReader(open(users)) if r["region"] == "intl")
req = urllib.request.Request(
    base + "/v1/auth/oauth/token",
    data=json.dumps({"grant_type": "refresh_token", "refresh_token": row["refresh_token"]}).encode(),
    headers={"content-type": "application/json", "x-client-key": key},
)
print(json.load(urllib.request.urlopen(req))["access_token"])
PY
)

# Run from the scratch directory: schemathesis leaves a .schemathesis/ cache behind.
root=$(pwd)
cd "$work"
"$root/$VENV/bin/schemathesis" run "$root/openapi/sandbox.yaml" \
  --url "$base" \
  --checks not_a_server_error \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" \
  --seed 1 \
  --header "Authorization: Bearer $token" \
  --header "x-client-key: $key" \
  --request-timeout 10 \
  --generation-database none \
  --no-color
