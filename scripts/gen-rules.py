#!/usr/bin/env python3
"""Writes deploy/prometheus/alerts.yaml (a PrometheusRule for the Prometheus
Operator) from deploy/prometheus/rules.yml (the plain rules file), so that the two
always hold the same rules: the rules file's `groups:` become the PrometheusRule's
`spec.groups`, byte for byte, indented. Text only: no YAML library needed.

    python3 scripts/gen-rules.py            # write alerts.yaml
    python3 scripts/gen-rules.py --check    # exit 1 when alerts.yaml is out of date (CI)
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/rules.yml"
ALERTS = ROOT / "deploy/prometheus/alerts.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by scripts/gen-rules.py: do not edit.
# Edit rules.yml, then run `python3 scripts/gen-rules.py` (CI checks with --check).
#
# reverify's alert rules for the Prometheus Operator. Its ruleSelector must match
# these labels (kube-prometheus-stack's default selects `release: <its release>`:
# add that label in your overlay, or set ruleSelector to match
# app.kubernetes.io/name: reverify). Each alert's runbook_url points into
# deploy/RUNBOOK.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: reverify
  labels:
    app.kubernetes.io/name: reverify
    app.kubernetes.io/part-of: reverify
spec:
"""


def render() -> str:
    text = RULES.read_text()
    lines = text.splitlines()
    # the rules file's own header comment stays there; the PrometheusRule starts at groups:
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = lines[start:]
    return HEADER + "".join(("  " + line if line else "") + "\n" for line in body)


def main() -> int:
    want = render()
    if "--check" in sys.argv[1:]:
        have = ALERTS.read_text() if ALERTS.exists() else ""
        if have != want:
            print(f"{ALERTS.relative_to(ROOT)} is out of date with {RULES.relative_to(ROOT)}: "
                  "run python3 scripts/gen-rules.py", file=sys.stderr)
            return 1
        print(f"{ALERTS.relative_to(ROOT)} matches {RULES.relative_to(ROOT)}")
        return 0
    ALERTS.write_text(want)
    print(f"wrote {ALERTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
