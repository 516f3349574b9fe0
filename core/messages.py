"""Event Hub audience messages in the Lytics format (CONTRACT 5.1), built from engine changes."""
from hashlib import sha256

from core.records import canonical_json_bytes, json_agrees
from core.timeutil import OPEN_EXIT, format_time


def message_id(message, agrees=None):
    """Deterministic id: a hash of the whole message without its id (subscription, user, T, changes).

    ``agrees``: see ``canonical_json_bytes`` (a caller that built the message knows).
    """
    body = message
    if "message_id" in message:
        body = {k: v for k, v in message.items() if k != "message_id"}
    return sha256(canonical_json_bytes(body, agrees)).hexdigest()[:32]


def build_message(change, key_field, key, settings, audience_list):
    """The message of one work for one :class:`core.engine.UserChange`, or None.

    ``settings`` is the work's EventHubSettings; ``audience_list`` the AudienceSet's audiences.
    None when the change touches none of the work's audiences or falls before the work's start.
    """
    if settings.start is not None:
        if change.backfill:
            if change.time != settings.start or not settings.existing_users:
                return None
        elif change.time < settings.start:
            return None
    elif change.backfill:
        return None
    exported = settings.audiences
    changes = [c for c in change.changes if c[0] in exported]
    if not changes:
        return None
    if len(changes) > 1:
        changes.sort(key=_audience_index)
    t = format_time(change.time)
    subscription_id = settings.subscription_id
    # Canonical JSON through orjson needs a look only at values from outside (config names, the
    # user key, traits): the rest are strings made here.
    agrees = type(key) is str and type(subscription_id) is str
    segment_events = []
    for audience_index, kind, entered in changes:
        audience = audience_list[audience_index]
        if not (type(audience.id) is str and type(audience.slug) is str and type(kind) is str):
            agrees = False
        segment_events.append({
            "id": audience.id, "slug": audience.slug, "event": kind,
            "enter": format_time(entered),
            "exit": OPEN_EXIT if kind == "enter" else t})
    data = {"_created": format_time(change.first_ts), "_modified": format_time(change.last_ts)}
    traits = change.traits
    fields = settings.user_fields if settings.user_fields is not None else sorted(traits)
    for name in fields:
        if name in traits:
            data[name] = value = traits[name]
            if type(value) is not str and agrees:
                agrees = json_agrees((value,))
    data[key_field] = key
    data["segment_events"] = segment_events
    message = {"data": data, "subscription_id": subscription_id, "timestamp": t}
    if change.backfill:
        message["backfill"] = True
    message["message_id"] = message_id(message, agrees)
    return message


def _audience_index(audience_change):
    return audience_change[0]


def message_sort_key(message):
    """Local-sink order: by user, then time, a backfill before a transition at the same time."""
    data = message["data"]
    return (data.get("user_id", ""), data.get("anonymous_id", ""), time_sort_key(message["timestamp"]),
            0 if message.get("backfill") else 1, message["message_id"])


def time_sort_key(text):
    """Orders ``format_time`` strings by time without parsing them: the first 19 characters are
    fixed-width, and the fraction (absent, 3 or 6 digits) is padded to microseconds."""
    return text[:19], text[20:-1].ljust(6, "0")
