"""Pytest fixtures for the Event Hubs suites: a local Event Hubs-compatible endpoint.

Registered for every test module by ``tests/conftest.py``.
"""
import pytest

from emulators.eventhubs import LocalEventHubs


@pytest.fixture
def local_eventhubs():
    """A started :class:`emulators.eventhubs.LocalEventHubs` on a free loopback port.

    Hub ``hub``, 4 partitions, a random key; stopped (every connection dropped) after the test.
    """
    hubs = LocalEventHubs(host="127.0.0.1", port=0, hub="hub", partitions=4)
    hubs.start()
    try:
        yield hubs
    finally:
        hubs.stop()
