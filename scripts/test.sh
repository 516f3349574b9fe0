#!/usr/bin/env bash
# The README's test command: installs everything the tests need on a fresh machine (Python packages
# into .venv, Azurite from npm into .tools/azurite) and runs the whole suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
touch .venv/.installed
if [ -f scripts/install_azurite.sh ]; then bash scripts/install_azurite.sh; fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
