#!/usr/bin/env bash
# `buf breaking` (WIRE_JSON) against main. google/api/*.proto is not in git (it is copied from
# googleapis-common-protos by scripts/gen_protos.sh, as the BSR cannot be reached), so main's
# image is built from main's protos/ plus that same copy.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}
ref=${1:-main}
if ! git cat-file -e "$ref:buf.yaml" 2>/dev/null; then
  echo "buf breaking: $ref has no buf.yaml yet; nothing to compare"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$ref" buf.yaml protos | tar -x -C "$tmp"
mkdir -p "$tmp/build" && cp -r build/googleapis "$tmp/build/"
(cd "$tmp" && "$OLDPWD/$BUF" build -o image.binpb)
"$BUF" build -o "$tmp/current.binpb"
"$BUF" breaking "$tmp/current.binpb" --against "$tmp/image.binpb"
echo "buf breaking: no breaking change against $ref"
