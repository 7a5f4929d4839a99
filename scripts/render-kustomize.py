#!/usr/bin/env python3
"""Renders a kustomization of deploy/kubernetes the way `kubectl kustomize` does,
for machines without kubectl (CI): multi-document YAML on standard output.

Only what these manifests use is understood, and anything else is refused with an
error rather than rendered wrong: `resources` (files and directories),
`labels` with `pairs` (metadata labels only), `images` (`newName`, `newTag`,
`digest`) and inline `patches` that `$patch: delete` a resource.
tests/deploy.rs compares its output with kubectl's where kubectl is installed.

Usage: render-kustomize.py DIR   (needs PyYAML: target/kv-venv/bin/python)
"""
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "labels", "images", "patches"}


def fail(message):
    sys.exit(f"render-kustomize: {message}")


def pod_specs(doc):
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield spec["template"]["spec"]
    elif kind == "Pod":
        yield spec


def set_image(container, images):
    image = container.get("image", "")
    name = image.split("@")[0]
    tail = name.rsplit("/", 1)[-1]
    if ":" in tail:
        name = name[: name.rindex(":")]
    for rule in images:
        if rule["name"] != name:
            continue
        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
        if unknown:
            fail(f"images: {sorted(unknown)} not supported")
        new = rule.get("newName", name)
        if "digest" in rule:
            new += "@" + rule["digest"]
        elif "newTag" in rule:
            new += ":" + str(rule["newTag"])
        container["image"] = new


def render(directory):
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN
    if unknown:
        fail(f"{path}: {sorted(unknown)} not supported")
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        if os.path.isdir(p):
            docs.extend(render(p))
        else:
            with open(p) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d is not None)
    for entry in k.get("labels", []):
        unknown = set(entry) - {"pairs"}
        if unknown:
            fail(f"{path}: labels {sorted(unknown)} not supported")
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    images = k.get("images", [])
    for d in docs:
        for spec in pod_specs(d):
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                set_image(c, images)
    for entry in k.get("patches", []):
        if set(entry) != {"patch"}:
            fail(f"{path}: only inline patches are supported")
        patch = yaml.safe_load(entry["patch"])
        if patch.get("$patch") != "delete":
            fail(f"{path}: only `$patch: delete` patches are supported")
        key = (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
        before = len(docs)
        docs = [d for d in docs if (d["apiVersion"], d["kind"], d["metadata"]["name"]) != key]
        if len(docs) == before:
            fail(f"{path}: the patch deletes {key}, which is not there")
    return docs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: render-kustomize.py DIR")
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
