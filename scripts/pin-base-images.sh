#!/usr/bin/env bash
# Pins the base images of deploy/Dockerfile (or the Dockerfile given): resolves
# each `ARG X_IMAGE=<tag>` to the digest of its multi-arch index and writes it into
# `ARG X_DIGEST=`. Needs the registry, through crane, regctl, skopeo or
# `docker buildx imagetools`, whichever is installed. Run it to take a rebuilt
# base image's fixes, or after changing a tag; review and commit the result.
set -euo pipefail
file=$(realpath "${1:-$(dirname "$0")/../deploy/Dockerfile}")

resolve() {
  local ref=$1
  if command -v crane >/dev/null 2>&1; then
    crane digest "$ref"
  elif command -v regctl >/dev/null 2>&1; then
    regctl image digest "$ref"
  elif command -v skopeo >/dev/null 2>&1; then
    # the raw manifest of a multi-arch tag is its index; its digest is its sha256
    skopeo inspect --raw "docker://$ref" | sha256sum | awk '{print "sha256:" $1}'
  elif docker buildx version >/dev/null 2>&1; then
    docker buildx imagetools inspect "$ref" --format '{{json .Manifest}}' \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])'
  else
    echo "pin-base-images: none of crane, regctl, skopeo, docker buildx is installed" >&2
    return 1
  fi
}

names=$(sed -n 's/^ARG \([A-Z_]*\)_IMAGE=.*/\1/p' "$file")
[ -n "$names" ] || { echo "pin-base-images: no ARG *_IMAGE= in $file" >&2; exit 1; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cp "$file" "$tmp"
for name in $names; do
  image=$(sed -n "s/^ARG ${name}_IMAGE=//p" "$file")
  grep -q "^ARG ${name}_DIGEST=" "$file" || { echo "pin-base-images: no ARG ${name}_DIGEST= in $file" >&2; exit 1; }
  digest=$(resolve "$image") || { echo "pin-base-images: cannot resolve $image" >&2; exit 1; }
  digest=$(printf '%s' "$digest" | tr -d '[:space:]')
  if ! [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "pin-base-images: $image resolved to '$digest', not a sha256 digest" >&2
    exit 1
  fi
  sed -i "s|^ARG ${name}_DIGEST=.*|ARG ${name}_DIGEST=${digest}|" "$tmp"
  echo "$image@$digest"
done
# all or nothing: the file changes only when every image resolved
cp "$tmp" "$file"
