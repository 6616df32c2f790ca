#!/usr/bin/env bash
# Vendor the UI's front-end assets from the npm registry into web/static/vendor/.
#
# Versions are pinned in web/package.json (exact versions, no ranges). The
# packages are installed into a throw-away directory with scripts disabled,
# and only their dist files are copied; nothing is fetched at run time (the
# appliance runs on closed networks). Idempotent: skips when the stamp
# matches package.json. Usage: bash web/vendor.sh [--force]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/static/vendor"
stamp="$out/.package.json"
if [[ "${1:-}" != "--force" && -f "$stamp" ]] && cmp -s "$stamp" "$here/package.json"; then
  echo "web/static/vendor is up to date"; exit 0
fi
command -v npm >/dev/null || { echo "vendor.sh: npm not found (apt-get install npm)" >&2; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cp "$here/package.json" "$tmp/package.json"
(cd "$tmp" && npm install --ignore-scripts --no-audit --no-fund --omit=dev --loglevel=error >/dev/null)
rm -rf "$out.new"; mkdir -p "$out.new"
nm="$tmp/node_modules"
cp "$nm/@xterm/xterm/lib/xterm.js" "$nm/@xterm/xterm/css/xterm.css" "$out.new/"
cp "$nm/@xterm/addon-fit/lib/addon-fit.js" "$out.new/"
for pkg in @xterm/xterm @xterm/addon-fit; do
  cp "$nm/$pkg/LICENSE" "$out.new/LICENSE.$(basename "$pkg")" 2>/dev/null || true
done
cp "$here/package.json" "$out.new/.package.json"
rm -rf "$out"; mv "$out.new" "$out"
echo "vendored into $out:"; ls "$out"
