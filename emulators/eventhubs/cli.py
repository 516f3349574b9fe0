"""``python -m emulators.eventhubs``: runs the local endpoint until Ctrl-C and prints its
connection string."""
import logging
import signal
import sys
import threading
from typing import List, Optional

from emulators.eventhubs.server import LocalEventHubs


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the endpoint until Ctrl-C or SIGTERM; returns the exit status (2 on a usage error)."""
    from pipelines.cli import CommandParser, UsageError
    parser = CommandParser(
        "python -m emulators.eventhubs",
        "Runs a local Event Hubs-compatible AMQP endpoint until Ctrl-C (or SIGTERM) and prints its\n"
        "connection string; the real azure-eventhub SDK talks to it. Loopback only, no TLS, a\n"
        "throwaway key. Ctrl-C stops it normally (exit 0) and prints how many events arrived.",
        ("python -m emulators.eventhubs",
         "python -m emulators.eventhubs --port 0 --hub audiences --partitions 2"))
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to bind (default 127.0.0.1; keep it on loopback), e.g. "
                             "--host 127.0.0.1")
    parser.add_argument("--port", type=int, default=5672,
                        help="TCP port (default 5672; 0: a free one), e.g. --port 0")
    parser.add_argument("--hub", default="hub",
                        help="Event hub name (default hub), e.g. --hub audiences")
    parser.add_argument("--partitions", type=int, default=4,
                        help="Partition count (default 4), e.g. --partitions 2")
    parser.add_argument("--key", default=None,
                        help="Shared access key (default: a random development key), e.g. "
                             "--key \"$(openssl rand -base64 32)\"")
    try:
        args = parser.parse(argv)
    except UsageError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    if args is None:
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        hubs = LocalEventHubs(host=args.host, port=args.port, hub=args.hub,
                              partitions=args.partitions, key=args.key).start()
    except (OSError, ValueError) as exc:
        print("error: cannot start the local Event Hubs endpoint: %s" % exc, file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A throwaway local development key: printing it is the point of this command.
    print("Local Event Hubs listening on %s (hub %r, %d partitions)"
          % (hubs.endpoint, hubs.hub, args.partitions), flush=True)
    print(hubs.connection_string, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        hubs.stop()
    print("stopped; %d events received" % len(hubs.events()), flush=True)
    return 0
