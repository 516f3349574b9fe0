"""The main pipeline: audiences evaluated per user with Beam state and event-time timers.

    python -m pipelines.stream --config examples/config.yaml --input examples/events.jsonl \
        [--output_dir out] [Beam options, e.g. --runner --streaming]

See README.md. Bounded file input locally; the same graph runs on Flink and Dataflow.
"""

from pipelines.common import exit_command, main
from transforms.audiences import EvaluateAudiencesStateful


def _evaluate(spec, worker_processes):
    # Worker processes evaluate users only in batch execution, where each user wakes up once.
    return EvaluateAudiencesStateful(spec, worker_processes)


def run(argv=None):
    return main(argv, "stream", _evaluate)


if __name__ == "__main__":
    exit_command(run())
