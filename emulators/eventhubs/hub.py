"""The event hub's storage: partitions of stored events, routing by partition key, and the start
position a consumer's selector filter asks for. Events are kept in memory only.
"""
import datetime
import hashlib
import itertools
import re
import threading
import time
from typing import Any, List, NamedTuple, Optional

from emulators.eventhubs.codec import Described, Timestamp, ULong, encode_value
from emulators.eventhubs.frames import (DELIVERY_ANNOTATIONS, ENQUEUED_TIME, HEADER,
                                        MESSAGE_ANNOTATIONS, OFFSET, PARTITION_KEY,
                                        SEQUENCE_NUMBER, Message)


class ReceivedEvent(NamedTuple):
    """One event as the endpoint stored it (``LocalEventHubs.events()``)."""
    body: bytes                  # the Data sections joined (None for an AMQP value/sequence body)
    partition_key: Optional[str]
    message_id: Any              # the AMQP message-id: str for the SDK's string ids
    partition: str
    sequence_number: int
    offset: str
    enqueued_time: datetime.datetime
    content_type: Optional[str]
    properties: dict             # application properties


class _StoredEvent(NamedTuple):
    event: ReceivedEvent
    arrival: int                 # global arrival order across partitions
    enqueued_ms: int
    offset_value: int
    wire: bytes                  # the message as delivered to consumers, annotations included


def partition_for_key(partition_key: str, partition_count: int) -> int:
    """The partition index a partition key is routed to: stable across runs and processes.

    The service uses its own hash; this endpoint only guarantees the property that matters to
    publishers, that one key always lands on one partition.
    """
    digest = hashlib.sha256(partition_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partition_count


class Hub:
    """Events of one event hub; thread-safe (connections run on their own threads)."""

    def __init__(self, name: str, partition_count: int) -> None:
        self.name = name
        self.partition_ids = [str(i) for i in range(partition_count)]
        self.created_ms = int(time.time() * 1000)
        self.partitions = [[] for _ in range(partition_count)]
        self._next_offset = [0] * partition_count
        self._arrival = itertools.count()
        self._round_robin = itertools.count()
        self.lock = threading.Lock()

    def partition_index(self, partition_id: str) -> Optional[int]:
        """The index of the partition with this id, or None if the hub has no such partition."""
        return int(partition_id) if partition_id in self.partition_ids else None

    def route(self, partition_key: Optional[str]) -> int:
        """The partition index for a delivery to the hub: by key, else round robin."""
        if partition_key is not None:
            return partition_for_key(partition_key, len(self.partitions))
        return next(self._round_robin) % len(self.partitions)

    def append(self, partition: int, messages: List[bytes], partition_key: Optional[str]) -> None:
        """Stores the encoded events of one delivery in one partition, in order."""
        with self.lock:
            for raw in messages:
                self._store(partition, raw, partition_key)

    def _store(self, partition, raw, partition_key):
        message = Message(raw)
        events = self.partitions[partition]
        sequence_number = len(events)
        offset_value = self._next_offset[partition]
        self._next_offset[partition] += len(raw)
        enqueued_ms = max(int(time.time() * 1000), events[-1].enqueued_ms if events else 0)
        inner_key = message.annotations.get(PARTITION_KEY)
        key = partition_key if partition_key is not None else inner_key
        annotations = dict(message.annotations)
        annotations.update({SEQUENCE_NUMBER: sequence_number, OFFSET: str(offset_value),
                            ENQUEUED_TIME: Timestamp(enqueued_ms)})
        if key is not None:
            annotations[PARTITION_KEY] = key
        # Section order is fixed by the spec: header and delivery annotations come before the
        # message annotations, everything else after them.
        wire = bytearray()
        for section in message.sections:
            if section.code in (HEADER, DELIVERY_ANNOTATIONS):
                wire += section.raw
        encode_value(Described(ULong(MESSAGE_ANNOTATIONS), annotations), wire)
        for section in message.sections:
            if section.code not in (HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS):
                wire += section.raw
        content_type = message.property(6)
        event = ReceivedEvent(
            body=b"".join(message.data) if message.data else None,
            partition_key=key,
            message_id=message.property(0),
            partition=self.partition_ids[partition],
            sequence_number=sequence_number,
            offset=str(offset_value),
            enqueued_time=datetime.datetime.fromtimestamp(enqueued_ms / 1000,
                                                          datetime.timezone.utc),
            content_type=str(content_type) if content_type is not None else None,
            properties={(k.decode() if isinstance(k, bytes) else k): v
                        for k, v in message.application_properties.items()})
        events.append(_StoredEvent(event, next(self._arrival), enqueued_ms, offset_value,
                                   bytes(wire)))

    def read(self, partition: int, start: int, limit: int) -> List["_StoredEvent"]:
        """At most ``limit`` stored events of a partition from index ``start``."""
        with self.lock:
            return self.partitions[partition][start:start + limit]

    def start_index(self, partition: int, selector: Optional[tuple]) -> int:
        """Index of the first event a consumer with this selector filter receives."""
        with self.lock:
            events = self.partitions[partition]
            if selector is None:
                return 0
            field, operator, value = selector
            if value == "@latest":
                return len(events)
            try:
                bound = int(value)
            except ValueError:
                return 0
            for index, stored in enumerate(events):
                actual = {"offset": stored.offset_value, "sequence": index,
                          "enqueued": stored.enqueued_ms}[field]
                if actual > bound or (operator == ">=" and actual == bound):
                    return index
            return len(events)

    def partition_info(self, partition: int) -> dict:
        """The ``$management`` READ answer for a partition."""
        with self.lock:
            events = self.partitions[partition]
            last = events[-1] if events else None
            return {
                "name": self.name,
                "partition": self.partition_ids[partition],
                "type": "com.microsoft:partition",
                "begin_sequence_number": 0,
                "last_enqueued_sequence_number": len(events) - 1,
                "last_enqueued_offset": str(last.offset_value) if last else "-1",
                "last_enqueued_time_utc": Timestamp(last.enqueued_ms if last else 0),
                "is_partition_empty": not events,
            }

    def snapshot(self, partition: Optional[int] = None) -> List[ReceivedEvent]:
        """The stored events of one partition, or of all in arrival order."""
        with self.lock:
            if partition is not None:
                return [stored.event for stored in self.partitions[partition]]
            stored = sorted(itertools.chain.from_iterable(self.partitions),
                            key=lambda s: s.arrival)
            return [s.event for s in stored]


_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time)\s*(>=|>)\s*'([^']*)'\s*$")


def parse_selector(expression: Optional[str]) -> Optional[tuple]:
    """``(field, operator, value)`` of a consumer's selector filter; None if it is not one.

    The field is ``offset``, ``sequence`` or ``enqueued``; the operator ``>`` or ``>=``.
    """
    match = _SELECTOR.match(expression or "")
    if not match:
        return None
    field = {"offset": "offset", "sequence-number": "sequence",
             "enqueued-time": "enqueued"}[match.group(1)]
    return field, match.group(2), match.group(3)
