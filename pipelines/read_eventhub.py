"""Print an event hub's events as JSON Lines: a local check of what a work delivered.

    python -m pipelines.read_eventhub --connection_string CS [--eventhub_name H]
        [--consumer_group $Default] [--from-start] [--timeout 5]

Reads every partition with the azure-eventhub SDK and prints each event's body on its own line
(a JSON body compactly, any other body as a JSON string), then exits once no new event has arrived
for ``--timeout`` seconds. Without ``--from-start`` only events sent after it starts are shown.
``--connection_string`` defaults to the ``EVENTHUB_CONNECTION_STRING`` environment variable, which
keeps the key out of the shell history; the connection string is never printed.

With the local endpoint (``python -m emulators.eventhubs``) pass the connection string it prints.
Exit status: 0 after the idle timeout, 1 if the hub cannot be read (one line on stderr), 2 on a
usage error.
"""
# Ctrl-C is handled from here on (core/interrupt.py).
from cdp_activation.core.interrupt import exit_on_interrupt, exit_process
if __name__ == "__main__":
    exit_on_interrupt()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import List, Optional, TextIO  # noqa: E402

from pipelines.cli import CommandParser, UsageError  # noqa: E402
from cdp_activation.clients.eventhubs import (EventHubsDeliveryError, parse_connection_string,  # noqa: E402
                               verify_connection)

_LOGGER = logging.getLogger(__name__)


def _line(body_text):
    """One output line for an event body: compact JSON, or the body as a JSON string."""
    try:
        return json.dumps(json.loads(body_text), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(body_text, ensure_ascii=False)


def read_events(connection_string: str, eventhub_name: Optional[str] = None,
                consumer_group: str = "$Default", from_start: bool = False, timeout: float = 5.0,
                out: Optional[TextIO] = None) -> int:
    """Writes event bodies to ``out`` (stdout) until ``timeout`` seconds pass without one.

    Returns the number of events written. Raises :class:`EventHubsDeliveryError` (one line, no
    secret) when the hub cannot be read.
    """
    from azure.eventhub import EventHubConsumerClient
    out = out or sys.stdout
    info = parse_connection_string(connection_string)
    # Fails in about a second on a wrong key, where the consumer would keep retrying.
    verify_connection(connection_string, eventhub_name=eventhub_name,
                      timeout_seconds=max(timeout, 10))
    kwargs = {"consumer_group": consumer_group, "retry_total": 1}
    if eventhub_name:
        kwargs["eventhub_name"] = eventhub_name
    client = EventHubConsumerClient.from_connection_string(connection_string, **kwargs)
    lock = threading.Lock()
    state = {"last": time.monotonic(), "count": 0, "error": None}

    def on_batch(unused_partition_context, events):
        with lock:
            for event in events:
                out.write(_line(event.body_as_str(encoding="UTF-8")) + "\n")
                state["count"] += 1
            out.flush()
            if events:
                state["last"] = time.monotonic()

    def on_partition_initialize(unused_partition_context):
        # Claiming partitions takes a moment; the idle clock starts once reading can start.
        with lock:
            state["last"] = time.monotonic()

    def on_error(unused_partition_context, error):
        with lock:
            state["error"] = error

    receiver = threading.Thread(
        target=client.receive_batch, name="read-eventhub", daemon=True,
        kwargs={"on_event_batch": on_batch, "on_error": on_error,
                "on_partition_initialize": on_partition_initialize,
                "starting_position": "-1" if from_start else "@latest",
                "max_batch_size": 300, "max_wait_time": 0.5})
    receiver.start()
    try:
        while receiver.is_alive():
            time.sleep(0.1)
            with lock:
                idle = time.monotonic() - state["last"]
                error = state["error"]
            if error is not None:
                hub = eventhub_name or info["eventhub_name"]
                raise EventHubsDeliveryError("reading %s/%s failed: %s" % (
                    info["namespace"], hub, type(error).__name__))
            if idle >= timeout:
                break
    finally:
        client.close()
        receiver.join(5)
    return state["count"]


def parser() -> CommandParser:
    p = CommandParser(
        "python -m pipelines.read_eventhub",
        "Prints an event hub's events as JSON Lines until no new event has arrived for --timeout\n"
        "seconds: a local check of what a work delivered. The connection string is never printed.",
        ("EVENTHUB_CONNECTION_STRING='Endpoint=sb://...' python -m pipelines.read_eventhub "
         "--from-start",
         "python -m pipelines.read_eventhub --connection_string \"$CS\" --eventhub_name audiences "
         "--timeout 10 > received.jsonl"))
    p.add_argument("--connection_string", default=os.environ.get("EVENTHUB_CONNECTION_STRING"),
                   metavar="CS",
                   help="Event Hubs connection string (default $EVENTHUB_CONNECTION_STRING, which "
                        "keeps it out of the shell history), e.g. --connection_string \"$CS\"")
    p.add_argument("--eventhub_name", default=None, metavar="HUB",
                   help="The event hub, when the connection string has no EntityPath, e.g. "
                        "--eventhub_name audiences")
    p.add_argument("--consumer_group", default="$Default", metavar="GROUP",
                   help="Consumer group to read with (default $Default), e.g. --consumer_group "
                        "checks")
    p.add_argument("--from-start", "--from_start", dest="from_start", action="store_true",
                   help="Read each partition from its start (default: new events only), e.g. "
                        "--from-start")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="Exit after this many seconds without a new event (default 5), e.g. "
                        "--timeout 10")
    p.add_argument("--verbose", action="store_true",
                   help="Log the SDK's progress to stderr, e.g. --verbose")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parser().parse(argv)
    except UsageError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    if args is None:
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.connection_string:
        print("error: --connection_string (or EVENTHUB_CONNECTION_STRING) is required",
              file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("error: --timeout must be positive", file=sys.stderr)
        return 2
    try:
        count = read_events(args.connection_string, eventhub_name=args.eventhub_name,
                            consumer_group=args.consumer_group, from_start=args.from_start,
                            timeout=args.timeout)
    except EventHubsDeliveryError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # called as a function, without the command's handler
        print("interrupted", file=sys.stderr)
        return 130
    _LOGGER.info("%d events read", count)
    return 0


if __name__ == "__main__":
    exit_process(main())
