"""``./run_local.sh --eventhub local``: the sample run, with its Event Hub works sending to a local
Event Hubs-compatible endpoint instead of writing local files.

Starts :class:`emulators.eventhubs.LocalEventHubs` on a free loopback port, gives every
``eventhub_audience_export`` work without a connection string that endpoint's connection string
(through a copy of the config that reads it from ``$LOCAL_EVENTHUB_CONNECTION_STRING``), runs
``pipelines.stream``, reads back what arrived and writes it to ``out/eventhub_received.jsonl``, then
stops the endpoint. Any other argument goes to the pipeline.
"""
import json
import os
import sys
import tempfile

import yaml

from emulators.eventhubs import LocalEventHubs

VARIABLE = "LOCAL_EVENTHUB_CONNECTION_STRING"


def _with_local_hub(config_path):
    with open(config_path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    for work in raw.get("works") or []:
        if work.get("workflow") == "eventhub_audience_export":
            config = work.setdefault("config", {})
            if not config.get("connection_string"):
                config["connection_string"] = "${%s}" % VARIABLE
    handle, path = tempfile.mkstemp(suffix=".yaml", prefix="config-local-eventhub-")
    with os.fdopen(handle, "w", encoding="utf-8") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    return path


def main(argv):
    args = list(argv)
    config = args[args.index("--config") + 1]
    output_dir = args[args.index("--output_dir") + 1] if "--output_dir" in args else "out"
    local_config = _with_local_hub(config)
    args[args.index("--config") + 1] = local_config
    from pipelines import stream
    with LocalEventHubs(hub="audiences", partitions=4) as hub:
        os.environ[VARIABLE] = hub.connection_string
        sys.stderr.write("local Event Hubs endpoint on 127.0.0.1:%d, hub 'audiences', 4 partitions\n" % hub.port)
        status = stream.run(args)
        received = hub.events()
        os.makedirs(output_dir, exist_ok=True)
        target = os.path.join(output_dir, "eventhub_received.jsonl")
        with open(target, "w", encoding="utf-8") as fh:
            for event in received:
                fh.write(json.dumps({"partition": event.partition, "sequence_number": event.sequence_number,
                                     "partition_key": event.partition_key, "message_id": event.message_id,
                                     "body": json.loads(event.body)}) + "\n")
        sys.stdout.write("  local Event Hub received %d messages: %s\n" % (len(received), target))
    os.unlink(local_config)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
