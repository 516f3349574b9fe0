"""Unknown keys in the job config: every mapping of the config has a fixed set of keys, and a key
outside it is an error naming its path and the nearest known key (CONTRACT section 3).

A misspelt key is never ignored: ``pasued: true`` ignored would deliver data meant to be held, and
``min_cout: 3`` ignored would turn "three purchases" into "any purchase".
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


def join(path: str, key: object) -> str:
    """``path.key``; a top-level key is its own path."""
    return "%s.%s" % (path, key) if path else str(key)


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, else ``""``."""
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return " (did you mean '%s'?)" % close[0] if close else ""


def unknown_key(mapping: Mapping[Any, Any], known: Iterable[str], path: str) -> tuple[str, str] | None:
    """(path of the key, reason) for the first key of ``mapping`` not in ``known``, or None;
    shown as e.g. ``works[2].config.period_hour: unknown key (did you mean 'period_hours'?)``.

    Without a close match the reason lists the keys that are known at that place.
    """
    known = tuple(known)
    for key in mapping:
        if key not in known:
            hint = did_you_mean(key, known)
            if hint:
                return join(path, key), "unknown key" + hint
            return join(path, key), "unknown key; known keys here: " + ", ".join(known)
    return None
