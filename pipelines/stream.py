"""The main pipeline: audiences evaluated per user with Beam state and event-time timers.

    python -m pipelines.stream --config examples/config.yaml --input examples/events.jsonl \
        [--output_dir out] [Beam options, e.g. --runner --streaming]

See README.md. Bounded file input locally; the same graph runs on Flink and Dataflow.
"""

from pipelines.common import exit_command, main
from transforms.audiences import EvaluateAudiencesStateful


def run(argv=None):
    return main(argv, "stream", EvaluateAudiencesStateful)


if __name__ == "__main__":
    exit_command(run())
