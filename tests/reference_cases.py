"""Shared pieces of the hand-computed reference cases (tests/test_reference_selfcheck.py and
tests/test_reference_outputs_selfcheck.py): small builders of records and configs, and the message
id recomputed from its documented formula."""
import hashlib
import json

from tests import reference as R

def line(**obj):
    return json.dumps(obj)


def ev(uid, name, ts, **kw):
    obj = {"user_id": uid, "event": name, "ts": ts}
    obj.update(kw)
    return json.dumps(obj)


def cfg(audiences, works=()):
    return {"account": {"name": "acme", "aid": 1234},
            "audiences": [dict(id="id-" + slug, slug=slug, name=slug, condition=c)
                          for slug, c in audiences],
            "works": list(works)}


def spans(config, lines, user="u1", key="user_id"):
    return R.reference_transitions(config, lines).get((key, user), {})


def mid(msg):
    body = {k: v for k, v in msg.items() if k != "message_id"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


FREQ = ("frequent_buyers", {"event": "purchase", "within": "7d", "min_count": 3})
