"""``python -m emulators.eventhubs``: the local Event Hubs endpoint from a shell (:mod:`.cli`)."""
import sys

from emulators.eventhubs.cli import main

sys.exit(main())
