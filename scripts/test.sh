#!/usr/bin/env bash
# The README's test command: installs everything the tests need on a fresh machine (Python packages
# into .venv, Azurite from npm into .tools/azurite, Beam's runners into .tools by
# scripts/install_runners.sh) and runs the whole suite, slow tests included, on two pytest-xdist
# worker processes (a later -n N in the arguments overrides it; -n 0 runs in this process), then
# lists the 25 slowest tests. Each worker starts its own test servers, each on a free port, and
# each test writes under its own temporary folder; the one shared folder, Hypothesis's example
# database (.hypothesis/), writes each example to a temporary file and renames it into place.
#   scripts/test.sh                 the whole suite (what CI runs)
#   scripts/test.sh --quick         the quick selection for development: no test marked slow
#   scripts/test.sh tests/test_x.py  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SELECT=()
if [ "${1:-}" = "--quick" ]; then
  shift
  SELECT=(-m "not slow")
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
touch .venv/.installed
if [ -f scripts/install_azurite.sh ]; then bash scripts/install_azurite.sh; fi
# The runners the engine tests name (tests/test_prism*.py, tests/test_flink_runner.py): built or
# assembled once, cached in .tools; no test downloads anything.
bash scripts/install_runners.sh
# The report test opens out/report.html in Debian's chromium.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian) for the report test" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
fi
# The linter first: unused or undefined names are bugs (rules in pyproject.toml).
.venv/bin/python -m ruff check --quiet .
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 -n 2 \
  ${SELECT[@]+"${SELECT[@]}"} "$@"
