#!/usr/bin/env bash
# One command for a first run: creates .venv, installs the project, makes the sample data, runs the
# main pipeline on the DirectRunner over it, and prints the summary. Each run starts from an empty
# out/. Extra arguments go to the pipeline, e.g.
#   ./run_local.sh --runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK
#   ./run_local.sh --runner=FlinkRunner   # embedded Flink (installs its job server first, docs/RUNNERS.md)
#   ./run_local.sh --eventhub local     # also send the messages to a local Event Hubs endpoint
#   ./run_local.sh --live               # a live stream on Prism: local input and output hubs, a
#                                       # generator of current events, enters/exits as they arrive
#                                       # until Ctrl-C (emulators/run_live.py; options such as
#                                       # --rate 50 or --seconds 120 go to it)
set -euo pipefail
cd "$(dirname "$0")"
# --help first of all: it prints and touches nothing (no .venv, no out/ removal, no sample data).
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    -h|--help)
      cat <<'USAGE'
usage: ./run_local.sh [--eventhub local] [pipeline options]

The first run of the project: creates .venv if missing, installs the project into it, makes the
sample data set examples/events.jsonl if missing, empties out/, runs pipelines.stream with
examples/config.yaml over examples/events.jsonl on the DirectRunner, and prints the summary
(out/summary.json, out/report.html).

Options:
  --eventhub local   Send the Event Hub works' messages to a local Event Hubs endpoint started for
                     the run (out/eventhub_received.jsonl holds what arrived), e.g. --eventhub local
  --help             Print this help and exit; nothing is created or removed.
  Any other option goes to pipelines.stream (listed below once .venv exists; docs/COMMANDS.md
  lists them all), e.g. --progress_seconds 1 or --runner=FlinkRunner (embedded Flink, one
  worker per core: the fast way to run a large batch locally).

Examples:
  ./run_local.sh
  ./run_local.sh --eventhub local
  ./run_local.sh --runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK
USAGE
      if [ -x .venv/bin/python ]; then
        echo
        echo "pipelines.stream options:"
        PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pipelines.stream --help | sed -n '/^Options:/,$p' | tail -n +2
      fi
      exit 0 ;;
  esac
done
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import apache_beam, core, yaml" >/dev/null 2>&1 || [ setup.py -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] || [ constraints.txt -nt .venv/.installed ]; then
  echo "installing the project into .venv (the first time takes a few minutes; log: .venv/install.log)" >&2
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -c constraints.txt -e . ; } \
      > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "error: installing the project failed; see .venv/install.log" >&2
    exit 1
  fi
  touch .venv/.installed
fi
if [ ! -f examples/events.jsonl ]; then
  echo "making the sample data set examples/events.jsonl" >&2
  .venv/bin/python examples/make_sample_data.py --out examples/events.jsonl
fi
ARGS=()
EVENTHUB=""
LIVE=""
RUNNER=""
while [ $# -gt 0 ]; do
  case "$1" in
    --live) LIVE=1; shift ;;
    --runner|--runner=*) RUNNER=1; ARGS+=("$1"); shift ;;
    --eventhub) EVENTHUB="$2"; shift 2 ;;
    --eventhub=*) EVENTHUB="${1#--eventhub=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
# Runners that need an engine installed first (scripts/install_runners.sh; cached after the first time).
case " ${ARGS[*]-} " in
  *[=\ ]FlinkRunner\ *|*[=\ ]flink\ *) PYTHON=.venv/bin/python bash scripts/install_runners.sh flink >&2 ;;
esac
rm -rf out
if [ -n "$LIVE" ]; then
  # A live input runs on Prism unless another runner is named: build it once (cached in .tools).
  if [ -z "$RUNNER" ]; then bash scripts/install_runners.sh prism >&2; fi
  exec .venv/bin/python -m emulators.run_live --output_dir out ${ARGS[@]+"${ARGS[@]}"}
fi
if [ "$EVENTHUB" = "local" ]; then
  exec .venv/bin/python -m emulators.run_with_local_eventhubs --config examples/config.yaml \
    --input examples/events.jsonl --output_dir out ${ARGS[@]+"${ARGS[@]}"}
fi
exec .venv/bin/python -m pipelines.stream --config examples/config.yaml \
  --input examples/events.jsonl --output_dir out ${ARGS[@]+"${ARGS[@]}"}
