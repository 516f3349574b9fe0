"""The main pipeline: audiences evaluated per user with Beam state and event-time timers.

    python -m pipelines.stream --config examples/config.yaml --input examples/events.jsonl \
        [--output_dir out] [Beam options, e.g. --runner --streaming]

See README.md and docs/COMMANDS.md (``--help`` lists every option). Bounded file input locally;
the same graph runs on Flink and Dataflow.
"""
# Ctrl-C is handled from here on, before Beam's import (seconds long) starts.
from cdp_activation.core.interrupt import exit_on_interrupt
if __name__ == "__main__":
    exit_on_interrupt()

from typing import List, Optional  # noqa: E402

from pipelines.launch import exit_command, main  # noqa: E402
from cdp_activation.transforms.audiences import EvaluateAudiencesStateful  # noqa: E402

HELP = (
    "python -m pipelines.stream --config FILE --input URI [options] [Beam options]",
    "The main pipeline: evaluates every audience per user with Beam state and event-time timers\n"
    "and delivers what each work of the config asks for (Event Hubs messages, Blob exports,\n"
    "alerts). Prints a summary; writes summary.json and report.html under --output_dir.",
    ("python -m pipelines.stream --config examples/config.yaml --input examples/events.jsonl",
     "python -m pipelines.stream --config examples/config.yaml --input 'archive/*.jsonl' "
     "--output_dir /tmp/run1 --runner=FlinkRunner",
     "python -m pipelines.stream --config job.yaml --input "
     "'eventhubs://events?connection_string_env=EVENTHUB_IN&mode=live' --streaming"))


def run(argv: Optional[List[str]] = None) -> int:
    return main(argv, "stream", EvaluateAudiencesStateful, help_text=HELP)


if __name__ == "__main__":
    exit_command(run())
