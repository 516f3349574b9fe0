"""Deterministic benchmark data shaped like a real event stream.

    python -m bench.make_data --events N --users U --days D --out F [--seed S]

What makes it real-shaped, and why each matters to the job's cost:
- ``ts`` and ``received_at`` are RFC 3339 strings with microseconds (what SDKs and our README send),
  not epoch numbers, so the parse cost is the one users pay;
- ``received_at`` lies minutes to hours after ``ts`` (mobile clients flush late), a few records
  slightly before it (client clocks ahead), and the file is in arrival (``received_at``) order, so
  the events of a user arrive out of ``ts`` order;
- about 3% of the records are sent again with the same ``event_id`` a few minutes to hours later
  (a retrying client), which the 24 h dedupe must drop;
- anonymous browsing followed by identifies, for the job's identity stitching
  (``identity: {stitch: true}``): a tenth of the users never log in (anonymous only, never
  merged); a twentieth browse under an anonymous id until a login time of their own, where one
  ``identify`` record carries both ids (their anonymous id merges into their user), and a fifth of
  their later events still carry only the anonymous id (another tab, an old cookie: forwarded to
  the user); for half of those, the anonymous events are flushed late and arrive after the
  identify; for one in five, another user identifies on the same anonymous id a day later (a
  shared device: a conflicting claim). The rest are known users (``user_id`` only);
- properties on most events, traits on some, and a small share of system events (job status and
  audit log) for the alert and system exports.
"""
import argparse
import datetime
import json
import random

#: Event names with their weights in the stream.
EVENTS = (["page_view"] * 8 + ["search"] * 2 + ["add_to_cart"] * 2
          + ["purchase", "email_open", "email_open", "profile"])
START = datetime.datetime(2026, 9, 21, tzinfo=datetime.timezone.utc)
SUBJECTS = ["Sale now on", "News of the week", "Sale ends tonight", "Your cart"]
QUERIES = ["running shoes", "boots", "rain jacket", "shoe laces", "socks"]
COUNTRIES = ["US", "DE", "FR", "GB", "ES"]
PLANS = ["free", "free", "pro", "enterprise"]
DUPLICATE_SHARE = 0.03
SYSTEM_SHARE = 0.005
US = 1_000_000


def rfc3339(us: int) -> str:
    """Epoch microseconds as RFC 3339 UTC text with six fractional digits."""
    moment = START + datetime.timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _delay_us(rnd: random.Random) -> int:
    """Ingestion delay: mostly minutes, a tail of hours, a few negative (clocks ahead)."""
    if rnd.random() < 0.02:
        return -rnd.randrange(1, 120) * US
    return int(min(rnd.lognormvariate(6.0, 1.4), 12 * 3600) * US)


def anonymous_id(user: int) -> str:
    return "anon-%06d" % user


def user_id(user: int) -> str:
    return "user%06d" % user


def merges(user: int) -> bool:
    """Whether ``user`` browses anonymously until its login, then identifies."""
    return user % 20 == 1


def login_us(user: int, span_us: int) -> int:
    """A merging user's login (identify) time: its own point in the span, from its number."""
    return (user * 7919 % 1000) * span_us // 1000


def _profile_event(rnd, i, seed, user, name, ts_us, span_us=None):
    record = {"event_id": "b%d-%d" % (seed, i), "event": name}
    if user % 10 == 0:
        record["anonymous_id"] = anonymous_id(user)
    elif merges(user) and span_us is not None and (ts_us < login_us(user, span_us)
                                                   or rnd.random() < 0.2):
        record["anonymous_id"] = anonymous_id(user)
    else:
        record["user_id"] = user_id(user)
    record["ts"] = rfc3339(ts_us)
    if name in ("purchase", "add_to_cart"):
        record["properties"] = {"price": round(rnd.uniform(1, 120), 2), "sku": "sku-%d" % rnd.randrange(50),
                                "currency": "EUR"}
    elif name == "email_open":
        record["properties"] = {"subject": rnd.choice(SUBJECTS), "campaign": "c-%d" % rnd.randrange(9)}
    elif name == "search":
        record["properties"] = {"query": rnd.choice(QUERIES)}
    elif name == "page_view":
        record["properties"] = {"url": "/p/%d" % rnd.randrange(200), "referrer": rnd.choice(["", "ads"])}
    if name == "profile" or rnd.random() < 0.03:
        record["traits"] = {"ltv": rnd.randint(0, 1000), "country": rnd.choice(COUNTRIES),
                            "plan": rnd.choice(PLANS), "email": "user%d@example.com" % user}
    return record


def _system_event(rnd, i, seed, ts_us):
    return {"kind": "system", "id": "se-%d-%d" % (seed, i), "ts": rfc3339(ts_us),
            "data": {"aid": 1, "subject_type": rnd.choice(["work", "work", "segment"]),
                     "subject_id": "w-%d" % rnd.randrange(20),
                     "verb": rnd.choice(["failed", "completed", "started", "synced"]),
                     "notes": "job %d" % i}}


def _identifies(rnd, seed, users, span_us):
    """``(received_us, record)`` of the identifies: one per merging user at its login, and a
    later one by another user on one in five of those anonymous ids (a shared device)."""
    out = []
    for user in range(users):
        if not merges(user):
            continue
        at = login_us(user, span_us)
        record = {"event_id": "b%d-id%d" % (seed, user), "event": "identify",
                  "user_id": user_id(user), "anonymous_id": anonymous_id(user), "ts": rfc3339(at),
                  "traits": {"email": "user%d@example.com" % user}}
        out.append((at + rnd.randrange(1, 30) * US, record))
        other = (user + 2) % users
        if user % 100 == 81 and at + 86400 * US < span_us and not merges(other) and other % 10:
            later = at + 86400 * US
            out.append((later + rnd.randrange(1, 30) * US, {
                "event_id": "b%d-id%d-%d" % (seed, user, other), "event": "identify",
                "user_id": user_id(other), "anonymous_id": anonymous_id(user),
                "ts": rfc3339(later)}))
    return out


def generate(events: int, users: int, days: int, seed: int = 11):
    """The records of the data set in arrival order (``received_at``), duplicates included."""
    rnd = random.Random(seed)
    span_us = days * 86400 * US
    arrivals = []               # (received_us, n, record)
    for received_us, record in _identifies(random.Random(seed + 1), seed, users, span_us):
        record["received_at"] = rfc3339(received_us)
        arrivals.append((received_us, len(arrivals), record))
    for i in range(events):
        ts_us = rnd.randrange(span_us)
        if rnd.random() < SYSTEM_SHARE:
            record = _system_event(rnd, i, seed, ts_us)
            user = None
        else:
            user = rnd.randrange(users)
            record = _profile_event(rnd, i, seed, user, rnd.choice(EVENTS), ts_us, span_us)
        received_us = max(0, ts_us + _delay_us(rnd))
        if user is not None and user % 40 == 21 and ts_us < login_us(user, span_us):
            # Flushed late: the anonymous events arrive after the identify.
            received_us = max(received_us, login_us(user, span_us) + rnd.randrange(60, 3 * 3600) * US)
        record["received_at"] = rfc3339(received_us)
        arrivals.append((received_us, len(arrivals), record))
        if rnd.random() < DUPLICATE_SHARE:
            again = dict(record)
            again_us = received_us + rnd.randrange(60, 6 * 3600) * US
            again["received_at"] = rfc3339(again_us)
            arrivals.append((again_us, len(arrivals), again))
    arrivals.sort(key=lambda arrival: arrival[:2])
    for _, _, record in arrivals:
        yield record


def write(path: str, events: int, users: int, days: int, seed: int = 11) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for record in generate(events, users, days, seed):
            fh.write(json.dumps(record, separators=(",", ":")))
            fh.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=150000, help="events before duplicates")
    parser.add_argument("--users", type=int, default=3000, help="distinct users")
    parser.add_argument("--days", type=int, default=40, help="days of event time the data spans")
    parser.add_argument("--seed", type=int, default=11, help="random seed (same seed, same file)")
    parser.add_argument("--out", required=True, help="the JSON Lines file to write")
    args = parser.parse_args()
    write(args.out, args.events, args.users, args.days, args.seed)


if __name__ == "__main__":
    main()
