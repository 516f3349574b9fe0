"""``./run_local.sh --eventhub local``: the sample run, with its Event Hub works sending to a local
Event Hubs-compatible endpoint instead of writing local files.

Starts :class:`emulators.eventhubs.LocalEventHubs` on a free loopback port, gives every
``eventhub_audience_export`` work without a connection string that endpoint's connection string
(through a copy of the config that reads it from ``$LOCAL_EVENTHUB_CONNECTION_STRING``), runs
``pipelines.stream``, reads back what arrived and writes it to ``out/eventhub_received.jsonl``, then
stops the endpoint. Any other argument goes to the pipeline (``--help`` lists them); an option
neither knows is an error before the endpoint starts. Ctrl-C: ``interrupted``, exit status 130, the
config copy removed (core/interrupt.py).
"""
# Ctrl-C is handled from here on (core/interrupt.py).
from cdp_activation.core.interrupt import exit_on_interrupt, exit_process
if __name__ == "__main__":
    exit_on_interrupt()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import yaml  # noqa: E402

from cdp_activation.core.workflows import EVENTHUB_AUDIENCE_EXPORT  # noqa: E402
from emulators.eventhubs import LocalEventHubs  # noqa: E402
from pipelines.cli import UsageError, wants_help  # noqa: E402
from cdp_activation.core.interrupt import temporary_file  # noqa: E402

VARIABLE = "LOCAL_EVENTHUB_CONNECTION_STRING"
USAGE = """usage: python -m emulators.run_with_local_eventhubs --config FILE --input URI [options]

The pipelines.stream run of ./run_local.sh --eventhub local: its Event Hub works without a
connection string send to a local Event Hubs endpoint started for the run, and what arrived is
written to OUTPUT_DIR/eventhub_received.jsonl. Every option is pipelines.stream's (below).

Examples:
  python -m emulators.run_with_local_eventhubs --config examples/config.yaml --input examples/events.jsonl
  ./run_local.sh --eventhub local

"""


def _with_local_hub(config_path, local_config):
    with open(config_path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    for work in raw.get("works") or []:
        if work.get("workflow") == EVENTHUB_AUDIENCE_EXPORT:
            config = work.setdefault("config", {})
            if not config.get("connection_string"):
                config["connection_string"] = "${%s}" % VARIABLE
    yaml.safe_dump(raw, local_config, sort_keys=False)


def _paths(args):
    """``(config, output_dir)`` from the pipeline's arguments (``--name value`` or ``--name=value``)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--output_dir", default="out")
    known, _ = parser.parse_known_args(args)
    if not known.config:
        raise UsageError("--config is required (see --help)")
    return known.config, known.output_dir


def main(argv):
    args = list(argv)
    from pipelines import stream
    from pipelines.cli import check_pipeline_arguments
    from pipelines.options import COMMAND_OPTIONS
    if wants_help(args):
        sys.stdout.write(USAGE)
        return stream.run(["--help"])
    try:
        check_pipeline_arguments(args, "pipelines.stream", COMMAND_OPTIONS)
        config, output_dir = _paths(args)
    except UsageError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    with temporary_file(tempfile.gettempdir(), prefix="config-local-eventhub-",
                        suffix=".yaml") as (fd, local_config):
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                _with_local_hub(config, fh)
            args = ["--config=" + local_config if a.startswith("--config=") else a for a in args]
            if "--config" in args:
                args[args.index("--config") + 1] = local_config
            return _run(args, output_dir)
        finally:
            os.unlink(local_config)


def _run(args, output_dir):
    from pipelines import stream
    from cdp_activation.transforms.localsink import replace_file
    with LocalEventHubs(hub="audiences", partitions=4) as hub:
        os.environ[VARIABLE] = hub.connection_string
        sys.stderr.write("local Event Hubs endpoint on 127.0.0.1:%d, hub 'audiences', 4 partitions\n" % hub.port)
        status = stream.run(args)
        received = hub.events()
        target = os.path.join(output_dir, "eventhub_received.jsonl")
        replace_file(target, [
            (json.dumps({"partition": event.partition, "sequence_number": event.sequence_number,
                         "partition_key": event.partition_key, "message_id": event.message_id,
                         "body": json.loads(event.body)}) + "\n").encode("utf-8")
            for event in received])
        sys.stdout.write("  local Event Hub received %d messages: %s\n" % (len(received), target))
    return status


if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
