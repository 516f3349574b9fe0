"""Event Hub audience messages in the Lytics format (CONTRACT 5.1), built from engine changes."""
from __future__ import annotations

import json
import marshal
from collections.abc import Callable, Iterable, Mapping, Sequence
from hashlib import sha256
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import zstandard

from cdp_activation.core.history import unpack_changes
from cdp_activation.core.jsonlines import encode_sorted_lines
from cdp_activation.core.records import canonical_json_bytes, json_agrees
from cdp_activation.core.timeutil import OPEN_EXIT, format_time

if TYPE_CHECKING:
    from cdp_activation.core.conditions import Audience
    from cdp_activation.core.workflows import EventHubSettings
    from cdp_activation.core.engine import UserChange

#: A message: the JSON object of CONTRACT 5.1.
Message = dict[str, Any]
#: A change as the engine makes it, or as its plain tuple (``core.history.pack_changes``).
Change = Union["UserChange", tuple[Any, ...]]
#: What :func:`message_sort_key` gives: user id, anonymous id, time, backfill first, message id.
MessageSortKey = tuple[str, str, tuple[str, str], int, str]
#: The changes of one user on a local sink's way: ``(key_field, key, changes)``, the changes as
#: :data:`Change` tuples or packed by ``core.history.pack_changes``.
UserChanges = tuple[str, str, Union[bytes, Sequence[Change]]]


class AudienceName(NamedTuple):
    """What a message says of an audience: enough for :class:`MessageBuilder`, cheap to send."""
    id: Any
    slug: str


def audience_names(audience_list: Iterable[Audience]) -> list[AudienceName]:
    return [AudienceName(a.id, a.slug) for a in audience_list]


def message_id(message: Mapping[str, Any], agrees: bool | None = None) -> str:
    """Deterministic id: a hash of the whole message without its id (subscription, user, T, changes).

    ``agrees``: see ``canonical_json_bytes`` (a caller that built the message knows).
    """
    body = message
    if "message_id" in message:
        body = {k: v for k, v in message.items() if k != "message_id"}
    return sha256(canonical_json_bytes(body, agrees)).hexdigest()[:32]


def build_message(change: Change, key_field: str, key: str, settings: EventHubSettings,
                  audience_list: Iterable[Audience | AudienceName]) -> Message | None:
    """The message of one work for one :class:`core.engine.UserChange`, or None.

    ``settings`` is the work's EventHubSettings; ``audience_list`` the AudienceSet's audiences.
    None when the change touches none of the work's audiences or falls before the work's start.
    A caller with many changes for one work builds a :class:`MessageBuilder` once instead.
    """
    return MessageBuilder(settings, audience_list).build(change, key_field, key)


class MessageBuilder:
    """``build_message`` for one work, with what depends only on the work looked up once: a
    pipeline builds hundreds of thousands of messages per work."""

    def __init__(self, settings: EventHubSettings,
                 audience_list: Iterable[Audience | AudienceName]) -> None:
        self._start = settings.start
        self._existing_users = settings.existing_users
        self._exported = frozenset(settings.audiences)
        self._subscription_id = subscription_id = settings.subscription_id
        self._user_fields = settings.user_fields
        self._computed_fields = getattr(settings, "computed_fields", None) or ()
        # Canonical JSON through orjson needs a look only at values from outside (config names,
        # the user key, traits): the rest are strings made here.
        self._audiences = [(a.id, a.slug, type(a.id) is str and type(a.slug) is str)
                           for a in audience_list]
        self._subscription_agrees = type(subscription_id) is str

    def build(self, change: Change, key_field: str, key: str) -> Message | None:
        # A change of six fields or more: a UserChange's seventh is its computed values, and
        # ``core.identity.MergeExit`` has those and ends with ``merged_into``.
        time, audience_changes, traits, first_ts, last_ts, backfill = change[:6]
        start = self._start
        if start is not None:
            if backfill:
                if time != start or not self._existing_users:
                    return None
            elif time < start:
                return None
        elif backfill:
            return None
        exported = self._exported
        changes = [c for c in audience_changes if c[0] in exported]
        if not changes:
            return None
        if len(changes) > 1:
            changes.sort(key=_audience_index)
        t = format_time(time)
        agrees = self._subscription_agrees and type(key) is str
        audiences = self._audiences
        segment_events = []
        for audience_index, kind, entered in changes:
            audience_id, slug, names_agree = audiences[audience_index]
            if not (names_agree and type(kind) is str):
                agrees = False
            segment_events.append({
                "id": audience_id, "slug": slug, "event": kind,
                "enter": format_time(entered),
                "exit": OPEN_EXIT if kind == "enter" else t})
        data = {"_created": format_time(first_ts), "_modified": format_time(last_ts)}
        fields = self._user_fields
        for name in (fields if fields is not None else sorted(traits)):
            if name in traits:
                data[name] = value = traits[name]
                if type(value) is not str and agrees:
                    agrees = json_agrees((value,))
        if self._computed_fields:
            # The computed traits' values at T (an absent one left out); after the traits, so a
            # computed trait named like a trait gives the value.
            computed = change[6] if len(change) > 6 and change[6] is not None else {}
            for name in self._computed_fields:
                if name in computed:
                    data[name] = value = computed[name]
                    if type(value) is not str and agrees:
                        agrees = json_agrees((value,))
        data[key_field] = key
        if len(change) > 7:
            data["merged_into"] = change[7]
        data["segment_events"] = segment_events
        message = {"data": data, "subscription_id": self._subscription_id, "timestamp": t}
        if backfill:
            message["backfill"] = True
        message["message_id"] = message_id(message, agrees)
        return message


def user_messages(build: Callable[[Change, str, str], Message | None], key_field: str, key: str,
                  changes: Iterable[Change]) -> list[Message]:
    """The messages of one user's changes (``build``: a :meth:`MessageBuilder.build`), in order."""
    return [m for m in (build(c, key_field, key) for c in changes) if m is not None]


def message_lines(settings: EventHubSettings, audience_list: Iterable[Audience | AudienceName],
                  users: Iterable[UserChanges]) -> list[list[tuple[MessageSortKey, bytes]]]:
    """A local sink's lines of one work for a batch of users: for each ``(key_field, key,
    changes)`` (changes as :class:`core.engine.UserChange` tuples, or packed by
    ``core.history.pack_changes``), the ``(sort key, JSON line)``
    pairs of its messages (``core.jsonlines.encode_sorted_lines``), empty when it has none."""
    build = MessageBuilder(settings, audience_list).build
    lines = []
    for key_field, key, changes in users:
        messages = user_messages(build, key_field, key, unpack_changes(changes))
        lines.append(encode_sorted_lines(messages, message_sort_key) if messages else [])
    return lines


def message_line_runs(settings: EventHubSettings, audience_list: Iterable[Audience | AudienceName],
                      batches: Iterable[Iterable[UserChanges]]) -> list[bytes | None]:
    """For each batch of users (each a list like :func:`message_lines`'s ``users``), their lines as
    one sorted run (:func:`pack_message_lines`), or None when none of them has a message: what a
    bounded local Event Hub sink's group holds, merged by :func:`merge_message_line_runs`."""
    runs = []
    for users in batches:
        pairs = [pair for lines in message_lines(settings, audience_list, users) for pair in lines]
        runs.append(pack_message_lines(pairs) if pairs else None)
    return runs


#: zstd level of a run: the fastest, about 9x smaller for message lines.
RUN_COMPRESSION_LEVEL = 1


def pack_message_lines(pairs: Iterable[tuple[MessageSortKey, bytes]]) -> bytes:
    """``(message_sort_key, line)`` pairs as one sorted *run* (bytes): the lines in key order, joined
    per user (the key's first two parts), with the user's part of the key.

    A sink's single group then holds a bytes element per batch of users and a few objects per user,
    where a list of pairs per user had every pair and key tuple encoded, decoded and rebuilt one by
    one (with 280k messages, 600k events, that sink had cost about a third of a stream run).
    ``marshal`` is enough: it is read back by the same Python, within one pipeline. The run is
    zstd-compressed: Beam's data plane copies each element several times on its way to the sink,
    one process doing it while the others wait, and 110 MB of lines (600k events) are 12 MB
    compressed; compressing costs the step that builds the run about 1 ms per MB.
    """
    pairs = sorted(pairs, key=_key_of)
    users, user, lines = [], None, []
    for key, line in pairs:
        if key[:2] != user:
            if lines:
                users.append((user, b"".join(lines)))
            user, lines = key[:2], []
        lines.append(line)
    if lines:
        users.append((user, b"".join(lines)))
    return zstandard.ZstdCompressor(level=RUN_COMPRESSION_LEVEL).compress(marshal.dumps(users, 4))


def merge_message_line_runs(runs: Iterable[bytes]) -> list[bytes]:
    """The lines of runs made by :func:`pack_message_lines`, in ``message_sort_key`` order, as
    chunks of whole lines (a user's lines, or one line).

    A user whose lines are in several runs (a user evaluated more than once) has them re-sorted by
    the key of each message, read back from its line.
    """
    users, decompress = [], zstandard.ZstdDecompressor().decompress
    for run in runs:
        users.extend(marshal.loads(decompress(run)))
    users.sort(key=_key_of)  # stable: a user's runs stay in the order they came
    merged, i = [], 0
    while i < len(users):
        j = i + 1
        while j < len(users) and users[j][0] == users[i][0]:
            j += 1
        if j == i + 1:
            merged.append(users[i][1])
        else:
            lines = [line + b"\n" for _, joined in users[i:j] for line in joined.split(b"\n")[:-1]]
            lines.sort(key=_line_sort_key)
            merged.extend(lines)
        i = j
    return merged


def _key_of(pair):
    return pair[0]


def _line_sort_key(line):
    return message_sort_key(json.loads(line))


def _audience_index(audience_change):
    return audience_change[0]


def message_sort_key(message: Mapping[str, Any]) -> MessageSortKey:
    """Local-sink order: by user, then time, a backfill before a transition at the same time."""
    data = message["data"]
    return (data.get("user_id", ""), data.get("anonymous_id", ""), time_sort_key(message["timestamp"]),
            0 if message.get("backfill") else 1, message["message_id"])


def time_sort_key(text: str) -> tuple[str, str]:
    """Orders ``format_time`` strings by time without parsing them: the first 19 characters are
    fixed-width, and the fraction (absent, 3 or 6 digits) is padded to microseconds."""
    return text[:19], text[20:-1].ljust(6, "0")
