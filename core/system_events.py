"""System events: the alert filter (CONTRACT 5.3) and the pipeline's own work events (5.4)."""
from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from cdp_activation.core.records import SystemEvent
from cdp_activation.core.redact import scrub
from cdp_activation.core.timeutil import MICROS, format_time

if TYPE_CHECKING:
    from cdp_activation.core.workflows import AlertSettings

#: ``notes`` longer than this are cut (an exception text can be long; alerts need the gist).
MAX_NOTES_CHARS = 2000


def matches(settings: AlertSettings, event: SystemEvent) -> bool:
    """Whether a system event matches an alert work's filter.

    ``settings.verbs`` None matches every verb; ``settings.sources`` None matches every subject,
    otherwise the subject type must be a key and the subject id in its list (an empty list: any id).
    """
    if settings.verbs is not None and event.verb not in settings.verbs:
        return False
    if settings.sources is not None:
        ids = settings.sources.get(event.subject_type)
        if ids is None:
            return False
        if ids and str(event.subject_id) not in ids:
            return False
    return True


def work_event(aid: int | None, work_id: str, verb: str, notes: str | None = None, unit: str | None = None,
               ts: int | None = None) -> SystemEvent:
    """A system event about one of the pipeline's own works (CONTRACT 5.4).

    ``unit`` names what the event is about (a file name, a batch id); with it the event id is
    stable, so a retried bundle that reports the same unit again produces the same id (and the same
    webhook ``X-Event-Id``). ``notes`` go to alert receivers: secret-looking fragments
    (``AccountKey=``, ``SharedAccessSignature=``, ``sig=``, ``password=``, ``Bearer <token>``...)
    are masked and the text is cut at :data:`MAX_NOTES_CHARS`. Callers still must not put known
    secrets in notes.
    """
    now = int(time.time() * MICROS) if ts is None else ts
    basis = "%s|%s|%s" % (work_id, verb, unit if unit is not None else now)
    event_id = "work-" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:24]
    data = {"aid": aid, "subject_type": "work", "subject_id": work_id, "verb": verb}
    if notes:
        data["notes"] = scrub_notes(notes)
    record = {"kind": "system", "id": event_id, "ts": format_time(now), "data": data}
    return SystemEvent(event_id, now, now, data, record)


def scrub_notes(notes: object) -> str:
    """``notes`` with secret-looking fragments masked, on at most :data:`MAX_NOTES_CHARS`."""
    text = scrub(notes)  # no known values: the secret-looking fragments (AccountKey=, sig=...)
    return text if len(text) <= MAX_NOTES_CHARS else text[:MAX_NOTES_CHARS - 1] + "…"
