"""A local Azure Event Hubs-compatible AMQP 1.0 endpoint, for tests and local runs.

Microsoft's Event Hubs emulator is a container image; this is a small pure-Python endpoint that the
real ``azure-eventhub`` SDK (5.x, pure-Python AMQP transport) talks to over plain AMQP on loopback.
It implements what the SDK's producer, consumer and management calls need, and checks credentials
the way the service does, so tests exercise the real SDK end to end:

* SASL ``ANONYMOUS`` (authentication happens afterwards, through CBS, as on the service);
* CBS ``put-token`` with a real shared-access-signature check against the configured key and key
  name: a wrong key, key name, expired token or a token for another hub is answered with status
  401, which the SDK raises as ``azure.eventhub.exceptions.AuthenticationError``;
* ``$management`` ``READ`` of the hub (``get_eventhub_properties``, ``get_partition_ids``) and of a
  partition (``get_partition_properties``);
* producer links to the hub or to ``/Partitions/N``: batches (message format ``0x80013700``, one
  complete event per Data section), single events, routing by the ``x-opt-partition-key``
  annotation (a stable hash, not the service's own), by partition id, or round robin; deliveries
  over the link's ``max-message-size`` are rejected with ``amqp:link:message-size-exceeded``;
* consumer links ``/ConsumerGroups/<any>/Partitions/N`` with the offset, sequence-number or
  enqueued-time selector filter; events carry ``x-opt-sequence-number``, ``x-opt-offset`` and
  ``x-opt-enqueued-time`` like the service's.

Every delivery is settled; every performative is written with all of its fields, because the SDK's
AMQP layer reads fields by position. Events are kept in memory only.

Usage in tests::

    with LocalEventHubs(partitions=4) as hubs:
        producer = EventHubProducerClient.from_connection_string(hubs.connection_string)
        ...
        assert [e.body for e in hubs.events()] == [...]

    hubs.fail_next_transfers(1)   # the next producer delivery drops the connection before settling
    hubs.drop_connections()       # drop every client connection now

From a shell (runs until Ctrl-C and prints its connection string)::

    python -m emulators.eventhubs [--host 127.0.0.1] [--port 5672] [--hub NAME] [--partitions 4]

The key is a throwaway local development key; the endpoint binds to loopback unless told otherwise
and has no TLS, so it must never be exposed to a network.

The package, along its seams:

=================  ==========================================================================
``codec``          the AMQP 1.0 type system: encoder and decoder
``frames``         frames, performatives and message sections
``hub``            the event hub's storage: partitions, routing, consumers' start positions
``nodes``          the ``$cbs`` (shared access signatures) and ``$management`` nodes
``connection``     one client connection: socket loop, SASL, sessions, links, credit, deliveries
``server``         :class:`LocalEventHubs`: binding, accepting, inspection and test hooks
``cli``            ``python -m emulators.eventhubs``
=================  ==========================================================================
"""
from emulators.eventhubs.cli import main
from emulators.eventhubs.hub import ReceivedEvent, partition_for_key
from emulators.eventhubs.nodes import check_sas_token
from emulators.eventhubs.server import LocalEventHubs

__all__ = ["LocalEventHubs", "ReceivedEvent", "check_sas_token", "main", "partition_for_key"]
