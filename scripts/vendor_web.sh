#!/usr/bin/env bash
# Vendors the console's chart library (Chart.js, MIT) from the npm registry into
# services/tollway/web/vendor/: the package tarball through `npm pack` (npm checks its integrity
# against the registry), then the one UMD file the console loads. Not committed; no CDN at run time.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.6.2
dest=services/tollway/web/vendor
[ -f "$dest/chart.umd.min.js" ] && grep -q "Chart.js v$VERSION" "$dest/chart.umd.min.js" && exit 0
command -v npm >/dev/null || { echo "vendor_web: npm is needed to fetch chart.js $VERSION (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "chart.js@$VERSION" >/dev/null)
tar -xzf "$tmp/chart.js-$VERSION.tgz" -C "$tmp" package/dist/chart.umd.min.js package/LICENSE.md
mkdir -p "$dest"
cp "$tmp/package/dist/chart.umd.min.js" "$dest/chart.umd.min.js"
cp "$tmp/package/LICENSE.md" "$dest/chart.js.LICENSE.md"
echo "vendored chart.js $VERSION -> $dest"
