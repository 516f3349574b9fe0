#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator) from npm into the project-local folder
# .tools/azurite, used by the Blob export tests (tests/fixtures_azurite.py).
# Idempotent: does nothing when azurite-blob is already installed there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/azurite"
bin="$dest/node_modules/.bin/azurite-blob"
if [ -e "$bin" ]; then
    echo "azurite already installed in $dest"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "install_azurite.sh: npm not found (Node.js 18+ is needed for the Blob tests)" >&2; exit 1; }
mkdir -p "$dest"
npm install --prefix "$dest" --no-audit --no-fund --loglevel=error azurite@3
[ -e "$bin" ] || { echo "install_azurite.sh: azurite-blob missing after npm install" >&2; exit 1; }
echo "azurite installed in $dest"
