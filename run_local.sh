#!/usr/bin/env bash
# One command for a first run: creates .venv, installs the project, makes the sample data, runs the
# main pipeline on the DirectRunner over it, and prints the summary. Extra arguments go to the
# pipeline (e.g. --runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import apache_beam, core, yaml" >/dev/null 2>&1 || [ setup.py -nt .venv/.installed ]; then
  echo "installing the project into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
  touch .venv/.installed
fi
if [ ! -f examples/events.jsonl ]; then
  echo "making the sample data set examples/events.jsonl" >&2
  .venv/bin/python examples/make_sample_data.py --out examples/events.jsonl
fi
exec .venv/bin/python -m pipelines.stream --config examples/config.yaml \
  --input examples/events.jsonl --output_dir out "$@"
