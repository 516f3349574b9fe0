#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator) from npm into the project-local folder
# .tools/azurite, used by the Blob tests (tests/fixtures_azurite.py).
# The version and every dependency come from scripts/azurite/package-lock.json (`npm ci`), so each
# machine runs the emulator the tests were written against. Raise the version there deliberately
# (`npm install --package-lock-only` in scripts/azurite/), with a test run.
# Idempotent: does nothing when that lock is already installed there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pins="$root/scripts/azurite"
dest="$root/.tools/azurite"
bin="$dest/node_modules/.bin/azurite-blob"
if [ -e "$bin" ] && cmp -s "$pins/package-lock.json" "$dest/package-lock.json"; then
    echo "azurite (scripts/azurite/package-lock.json) already installed in $dest"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "install_azurite.sh: npm not found (Node.js 18+ is needed for the Blob tests)" >&2; exit 1; }
mkdir -p "$dest"
cp "$pins/package.json" "$pins/package-lock.json" "$dest/"
npm ci --prefix "$dest" --no-audit --no-fund --loglevel=error
[ -e "$bin" ] || { echo "install_azurite.sh: azurite-blob missing after npm ci" >&2; exit 1; }
echo "azurite $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$dest/node_modules/azurite/package.json" | head -n 1) installed in $dest"
