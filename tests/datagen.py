"""Random data sets for the acceptance tests.

    generate(seed, n_users=200, days=30) -> (config_dict, lines)

The config's audiences together use every node type (and/or/not, trait, event with and without
within/where/min_count/max_count, `event: "*"`, audience references incl. a nested one, computed
traits) and every operator in both trait conditions and `where`. Its computed traits use every op,
windowed and all time, with `where`, a dotted property, `event: "*"`, and values that do not
qualify (a price given as a string). The lines hold anonymous users, events with and without event_id,
every timestamp form, received_at absent or delayed (plus an ingestion outage that leaves empty
export windows), trait updates incl. null removal, duplicates within and after 24 h, malformed
lines, system events, in shuffled order.

Cases where the contract + docs/SEMANTICS.md are ambiguous are avoided on purpose (see the notes
in generate()): the data only exercises behaviour that is fully specified.
"""

from __future__ import annotations

import json
import random

from tests.datagen_computed import COMPUTED_AUDIENCES, COMPUTED_TRAITS

US = 1_000_000
HOUR = 3600 * US
DAY = 24 * HOUR

BASE = 1793491200 * US          # 2026-11-01T00:00:00Z
#: Share of a user's events whose ts repeats one of the user's earlier event times (ties).
TIE_SHARE = 0.06
COUNTRIES = ["US", "DE", "FR", "GB", "CA", "ES", "BR", "JP"]
CITIES = ["Berlin", "Paris", "London", "Austin", "Madrid", "Tokyo"]
FIRST_NAMES = ["Ada", "Bruno", "Chloé", "Dmitri", "Élodie", "Farah", "Grace", "Hugo", "Ines",
               "José", "Kenji", "Lena", "Marta", "Nils", "Olga", "Pablo", "Quinn", "Rosa",
               "Sven", "Tariq", "Uma", "Véra", "Wei", "Yara", "Zoë"]
DOMAINS = ["example.com", "example.org", "mail.example.com", "corp.example.net"]
SKUS = ["sku-1", "sku-2", "sku-3", "sku-4", "sku-5", "sku-7", "sku-9"]
SUBJECTS = ["Sale: 20% off", "Sale ends tonight", "Weekly digest", "New arrivals", "=HYPERLINK()",
            "Your cart misses you", "-50% flash sale"]
URLS = ["/", "/shoes", "/boots", "/cart", "/checkout", "/account", "/blog/post-1"]
QUERIES = ["running shoes", "Boots", "hat", "rain jacket", "shoe laces", "socks", "@gift"]
CATEGORIES = ["shoes", "apparel", "accessories"]
TAGS = ["beta", "newsletter", "churn-risk", "loyal", "-promo"]
COUPONS = ["WELCOME10", "-5EUR", "+1FREE", "SPRING"]

def _hex(rng, n):
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _rfc(us, offset_min=0, frac="auto"):
    """RFC 3339 text for epoch microseconds, in a given UTC offset."""
    import datetime as dt
    tz = dt.timezone(dt.timedelta(minutes=offset_min))
    t = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)
    t = t.astimezone(tz)
    s = t.strftime("%Y-%m-%dT%H:%M:%S")
    micros = us % US
    if frac == "ms":
        s += ".%03d" % (micros // 1000)
    elif frac == "us":
        s += ".%06d" % micros
    elif frac == "short":
        s += "." + (("%06d" % micros).rstrip("0") or "0")
    elif micros:
        s += ".%06d" % micros
    if offset_min == 0:
        return s + "Z"
    sign = "+" if offset_min > 0 else "-"
    m = abs(offset_min)
    return s + "%s%02d:%02d" % (sign, m // 60, m % 60)


class _Clock:
    """Draws event times with a fraction matching a randomly chosen textual form."""

    FORMS = ["rfc_z", "rfc_z", "rfc_z", "rfc_frac_ms", "rfc_frac_us", "rfc_frac_short",
             "rfc_offset", "epoch_s", "epoch_s_float", "epoch_ms"]

    def __init__(self, rng):
        self.rng = rng

    def draw(self, lo, hi):
        """-> (us, form): a time in [lo, hi) whose sub-second part suits `form`."""
        rng = self.rng
        form = rng.choice(self.FORMS)
        secs = rng.randrange(lo // US, max(lo // US + 1, hi // US))
        if form in ("rfc_z", "rfc_offset", "epoch_s"):
            frac = 0 if rng.random() < 0.8 else rng.randrange(1, 1000) * 1000
            if form == "epoch_s":
                frac = 0
        elif form in ("rfc_frac_ms", "epoch_ms"):
            frac = rng.randrange(0, 1000) * 1000
        elif form == "rfc_frac_us":
            frac = rng.randrange(1, US)
        elif form == "rfc_frac_short":
            frac = rng.choice([100000, 500000, 250000, 120000])
        else:  # epoch_s_float: exactly representable binary fractions
            frac = rng.choice([125000, 250000, 375000, 500000, 750000, 875000])
        return secs * US + frac, form

    def render(self, us, form):
        rng = self.rng
        if form == "rfc_z":
            return _rfc(us)
        if form == "rfc_frac_ms":
            return _rfc(us, frac="ms")
        if form == "rfc_frac_us":
            return _rfc(us, frac="us")
        if form == "rfc_frac_short":
            return _rfc(us, frac="short")
        if form == "rfc_offset":
            return _rfc(us, offset_min=rng.choice([120, -300, 330, 60, -90]))
        if form == "epoch_s":
            assert us % US == 0
            return us // US
        if form == "epoch_s_float":
            return us / US
        if form == "epoch_ms":
            assert us % 1000 == 0
            return us // 1000
        raise AssertionError(form)


def make_config(days=30):
    start = BASE + (days // 2) * DAY
    aud = []

    def add(aid, slug, name, cond):
        aud.append({"id": aid, "slug": slug, "name": name, "condition": cond})

    add("a1f0c0de01", "frequent_buyers", "Frequent buyers",
        {"event": "purchase", "within": "7d", "min_count": 3})
    add("a1f0c0de02", "high_value", "High value",
        {"and": [{"trait": "ltv", "op": "gte", "value": 500},
                 {"trait": "country", "op": "in", "value": ["US", "DE", "FR"]}]})
    add("a1f0c0de03", "cart_abandoners", "Cart abandoners",
        {"and": [{"event": "add_to_cart", "within": "1d"},
                 {"not": {"event": "purchase", "within": "1d"}}]})
    add("a1f0c0de04", "newsletter_engaged", "Newsletter engaged",
        {"event": "email_open", "within": "3d",
         "where": {"property": "subject", "op": "starts_with", "value": "Sale"}})
    add("a1f0c0de05", "vip", "VIP",
        {"and": [{"audience": "frequent_buyers"}, {"audience": "high_value"}]})
    add("a1f0c0de06", "vip_or_enterprise", "VIP or enterprise",       # nested audience reference
        {"or": [{"audience": "vip"}, {"trait": "plan", "op": "eq", "value": "enterprise"}]})
    add("a1f0c0de07", "quiet_users", "No login in 2 days",
        {"event": "login", "within": "2d", "min_count": 0, "max_count": 0})
    add("a1f0c0de08", "light_browsers", "1-3 page views in 12 h",
        {"event": "page_view", "within": "12h", "max_count": 3})
    add("a1f0c0de09", "big_spenders_eur", "Ever bought > 100 EUR",
        {"event": "purchase",
         "where": {"and": [{"property": "price", "op": "gt", "value": 100},
                           {"property": "currency", "op": "eq", "value": "EUR"}]}})
    add("a1f0c0de10", "mid_age_paying", "30 < age <= 45, paying",
        {"and": [{"trait": "age", "op": "gt", "value": 30},
                 {"trait": "age", "op": "lte", "value": 45},
                 {"trait": "plan", "op": "ne", "value": "free"}]})
    add("a1f0c0de11", "beta_abroad", "Beta testers outside US/CA",
        {"and": [{"trait": "tags", "op": "contains", "value": "beta"},
                 {"trait": "country", "op": "not_in", "value": ["US", "CA"]},
                 {"trait": "name", "op": "matches", "value": "^[A-M]"}]})
    add("a1f0c0de12", "reachable", "Reachable",
        {"or": [{"and": [{"trait": "email", "op": "exists"},
                         {"trait": "email", "op": "ends_with", "value": ".com"},
                         {"not": {"trait": "email", "op": "starts_with", "value": "z"}}]},
                {"and": [{"trait": "email", "op": "missing"},
                         {"trait": "phone", "op": "exists"}]}]})
    add("a1f0c0de13", "misc_traits", "Misc traits",
        {"or": [{"trait": "signup_date", "op": "gt", "value": "2026-10-20"},
                {"trait": "address.city", "op": "eq", "value": "Berlin"},
                {"trait": "opt_in", "op": "eq", "value": 1},          # bool is not a number: false
                {"and": [{"trait": "opt_in", "op": "eq", "value": True},
                         {"trait": "score", "op": "lt", "value": 0.25}]},
                {"and": [{"trait": "score", "op": "gte", "value": 0.9},
                         {"trait": "email", "op": "contains", "value": "@example.org"}]}]})
    add("a1f0c0de14", "shoe_searchers", "2+ shoe searches in 3 days",
        {"event": "search", "within": "3d", "min_count": 2,
         "where": {"or": [{"property": "query", "op": "matches", "value": "(?i)shoe|boot"},
                          {"property": "product.category", "op": "eq", "value": "shoes"}]}})
    add("a1f0c0de15", "checkout_visitors", "Checkout visit with referrer in a week",
        {"event": "page_view", "within": "1w",
         "where": {"and": [{"property": "url", "op": "ends_with", "value": "/checkout"},
                           {"property": "referrer", "op": "exists"}]}})
    add("a1f0c0de16", "coupon_shoppers", "Coupon or cheap purchases",
        {"event": "purchase", "within": "14d", "min_count": 2, "max_count": 4,
         "where": {"or": [{"property": "coupon", "op": "exists"},
                          {"and": [{"property": "price", "op": "lte", "value": 30},
                                   {"property": "sku", "op": "in",
                                    "value": ["sku-1", "sku-2", "sku-3"]},
                                   {"property": "currency", "op": "ne", "value": "USD"}]}]}})
    add("a1f0c0de17", "gift_carts", "Gift carts 20-200 in 36 h",
        {"event": "add_to_cart", "within": "36h",
         "where": {"and": [{"property": "price", "op": "gte", "value": 20},
                           {"property": "price", "op": "lt", "value": 200},
                           {"property": "sku", "op": "not_in", "value": ["sku-9"]},
                           {"or": [{"property": "items", "op": "contains", "value": "gift"},
                                   {"property": "coupon", "op": "missing"}]}]}})
    add("a1f0c0de18", "active_no_cart", "Active in 90 min, no cart ever",
        {"and": [{"event": "page_view", "within": "90m"},
                 {"not": {"event": "add_to_cart"}},
                 {"not": {"audience": "vip_or_enterprise"}}]})
    add("a1f0c0de19", "dormant", "Reachable, no event of any name in 2 days",
        {"and": [{"trait": "email", "op": "exists"},
                 {"not": {"event": "*", "within": "2d"}}]})
    add("a1f0c0de20", "busy_shoppers", "5+ events with a price in 6 h",
        {"event": "*", "within": "6h", "min_count": 5,
         "where": {"property": "price", "op": "exists"}})
    computed = dict(COMPUTED_TRAITS)
    for aid, slug, name, cond in COMPUTED_AUDIENCES:
        add(aid, slug, name, cond)
    works = [
        {"id": "w-eh-sub", "workflow": "eventhub_audience_export", "label": "Subset with backfill",
         "config": {"subscription_id": "7e2b8804bbe162cd3f9c0c5991bf3078",
                    "audiences": ["frequent_buyers", "a1f0c0de05", "cart_abandoners",
                                  "a1f0c0de07", "beta_abroad"],
                    "existing_users": True,
                    "start": _rfc(start),
                    "user_fields": ["email", "country", "user_id"],
                    "computed_fields": ["spend_7d", "orders", "avg_cart_3d", "last_subject_2d"]}},
        {"id": "w-eh-all", "workflow": "eventhub_audience_export", "config": {}},
        {"id": "w-blob-events", "workflow": "azure_blob_event_export",
         "config": {"container": "exports", "prefix": "acme/events/", "export_type": "events",
                    "period_hours": 6, "anchor": "2026-11-01T03:00:00Z",
                    "events": ["purchase", "add_to_cart", "email_open", "profile", "search"],
                    "event_parameters": ["price", "currency", "sku", "items", "coupon",
                                         "subject", "product"],
                    "attributes": ["email", "country", "ltv", "tags", "opt_in"],
                    "computed": ["spend_7d", "orders", "max_price", "first_sku", "last_category",
                                 "min_cart_1d"],
                    "format": "csv"}},
        {"id": "w-blob-sys", "workflow": "azure_blob_event_export",
         "config": {"container": "exports", "prefix": "acme/system/",
                    "export_type": "system_events", "period_hours": 24, "format": "csv"}},
    ]
    return {"account": {"name": "acme", "aid": 1234}, "computed_traits": computed,
            "audiences": aud, "works": works}


def generate(seed, n_users=200, days=30, outage=True, malformed=True, system=True):
    """-> (config dict, list of JSON lines).

    Ambiguities avoided on purpose (documented in the acceptance report):
    - no event ts equals the Event Hub `start`;
    - duplicates are byte-identical except `received_at`;
    - property nulls only on `campaign` (never tested with exists/missing);
    - `not_in` only on values that are absent or of the list's type;
    - objects in exported columns have their keys in sorted order and ASCII text;
    - epoch floats have exactly representable fractions; no sub-microsecond digits.
    """
    rng = random.Random(seed)
    clock = _Clock(rng)
    config = make_config(days)
    span = days * DAY
    start = BASE + (days // 2) * DAY
    outage_lo = BASE + (days * 2 // 3) * DAY + 5 * HOUR
    outage_hi = outage_lo + 20 * HOUR
    records = []            # (dict, received_us or None)

    def received_for(ts):
        r = rng.random()
        if r < 0.6:
            delay = rng.randrange(0, 5 * US)
        elif r < 0.9:
            delay = rng.randrange(5 * US, 10 * 60 * US)
        else:
            delay = rng.randrange(10 * 60 * US, 3 * HOUR)
        rec = ts + delay
        if outage and outage_lo <= rec < outage_hi:
            rec = outage_hi + rng.randrange(0, 2 * HOUR)
        return rec

    def emit(obj, ts, form, received=True):
        obj["ts"] = clock.render(ts, form)
        if received is True and not (outage and outage_lo <= ts < outage_hi) and rng.random() < 0.15:
            received = None      # absent: received_at = ts
        elif received is True:
            received = received_for(ts)
        if received is not None:
            rform = rng.choice(["rfc_z", "rfc_frac_us", "epoch_ms", "rfc_offset"])
            if rform == "epoch_ms" and received % 1000:
                rform = "rfc_frac_us"
            if rform == "rfc_z" and received % US:
                rform = "rfc_frac_us"
            if rform == "rfc_offset" and received % US:
                rform = "rfc_frac_us"
            obj["received_at"] = clock.render(received, rform)
        records.append((obj, received if received is not None else ts))
        return obj

    used_ids = set()

    def new_event_id():
        while True:
            eid = "evt-" + _hex(rng, 12)
            if eid not in used_ids:
                used_ids.add(eid)
                return eid

    users = []
    for i in range(n_users):
        r = rng.random()
        if r < 0.15:
            users.append({"anonymous_id": "anon-" + _hex(rng, 10)})
        else:
            u = {"user_id": "u%04d" % i}
            if rng.random() < 0.3:
                u["anonymous_id"] = "anon-" + _hex(rng, 10)
            users.append(u)
    # an anonymous user whose anonymous_id equals a known user's user_id: a different user
    known = [u for u in users if "user_id" in u]
    if known:
        users.append({"anonymous_id": known[0]["user_id"]})
    # an anonymous user whose records carry "user_id": ""
    users.append({"anonymous_id": "anon-emptyuid", "_empty_uid": True})

    for ui, u in enumerate(users):
        taken = set()

        def when(lo, hi):
            # Some events share a ts with an earlier event of the same user: the contract orders
            # such ties by (ts, event_id), and the reference must agree with the code on them.
            if taken and rng.random() < TIE_SHARE:
                ties = sorted(t for t in taken if max(lo, BASE) <= t < min(hi, BASE + span))
                if ties:
                    return rng.choice(ties), "rfc_frac_us"
            for _ in range(100):
                ts, form = clock.draw(max(lo, BASE), min(hi, BASE + span))
                if ts not in taken and ts != start:
                    taken.add(ts)
                    return ts, form
            raise RuntimeError("no free time")

        def base_obj(name, with_id=None):
            obj = {}
            if with_id is None:
                with_id = rng.random() < 0.7
            if with_id:
                obj["event_id"] = new_event_id()
            if "user_id" in u:
                obj["user_id"] = u["user_id"]
            if "anonymous_id" in u and ("user_id" not in u or rng.random() < 0.5):
                obj["anonymous_id"] = u["anonymous_id"]
            if u.get("_empty_uid"):
                obj["user_id"] = ""
            obj["event"] = name
            return obj

        first = BASE + rng.randrange(0, max(1, span * 2 // 3))
        heavy = rng.random() < 0.25
        # initial profile
        ts, form = when(first, first + HOUR)
        traits = {}
        name = rng.choice(FIRST_NAMES)
        if rng.random() < 0.85:
            traits["email"] = "%s%d@%s" % (rng.choice(["a", "b", "z", "m"]) + name.lower()[:3]
                                             .encode("ascii", "ignore").decode(), ui,
                                             rng.choice(DOMAINS))
        traits["country"] = rng.choice(COUNTRIES)
        traits["plan"] = rng.choice(["free", "free", "pro", "enterprise"])
        traits["age"] = rng.randrange(18, 70)
        traits["name"] = name
        traits["tags"] = rng.sample(TAGS, rng.randrange(0, 3))
        traits["signup_date"] = "2026-%02d-%02d" % (rng.randrange(6, 12), rng.randrange(1, 29))
        traits["opt_in"] = rng.random() < 0.5
        traits["score"] = round(rng.random(), 3)
        traits["ltv"] = rng.choice([0, 120.5, 480, 520, 999.99, 1500]) if rng.random() < 0.9 \
            else "650"                                           # a string: never >= 500
        if rng.random() < 0.5:
            traits["phone"] = "+49%09d" % rng.randrange(10 ** 8, 10 ** 9)   # formula guard
        if rng.random() < 0.4:
            traits["address"] = {"city": rng.choice(CITIES), "zip": "%05d" % rng.randrange(99999)}
        obj = base_obj("profile")
        obj["traits"] = traits
        emit(obj, ts, form)

        n_sessions = rng.randrange(8, 25) if heavy else rng.randrange(1, 8)
        ltv = traits["ltv"] if isinstance(traits["ltv"], (int, float)) else 0
        for _s in range(n_sessions):
            s0 = first + rng.randrange(0, max(1, BASE + span - first))
            t = s0
            for _p in range(rng.randrange(1, 6)):
                t += rng.randrange(10, 900) * US
                if t >= BASE + span:
                    break
                ts, form = when(t, t + US)
                obj = base_obj("page_view")
                props = {"url": rng.choice(URLS)}
                if rng.random() < 0.6:
                    props["referrer"] = rng.choice(["google", "newsletter", "direct"])
                obj["properties"] = props
                emit(obj, ts, form)
            r = rng.random()
            if r < 0.35 and t < BASE + span - HOUR:
                t += rng.randrange(10, 600) * US
                ts, form = when(t, t + US)
                obj = base_obj("search")
                props = {"query": rng.choice(QUERIES)}
                if rng.random() < 0.5:
                    props["product"] = {"category": rng.choice(CATEGORIES)}
                obj["properties"] = props
                emit(obj, ts, form)
            if rng.random() < 0.5 and t < BASE + span - HOUR:
                t += rng.randrange(10, 600) * US
                ts, form = when(t, t + US)
                obj = base_obj("add_to_cart")
                price = rng.choice([9.99, 19.99, 25, 49.5, 120, 199.99, 250, "39.90"])
                props = {"sku": rng.choice(SKUS), "price": price}
                if rng.random() < 0.4:
                    props["items"] = rng.sample(["gift", "wrap", "card", "shoe"], rng.randrange(1, 3))
                if rng.random() < 0.3:
                    props["coupon"] = rng.choice(COUPONS)
                obj["properties"] = props
                emit(obj, ts, form)
                n_buy = rng.choice([0, 0, 1, 1, 2, 3]) if heavy else rng.choice([0, 0, 0, 1])
                for _b in range(n_buy):
                    t += rng.randrange(30, 3600) * US
                    if t >= BASE + span:
                        break
                    ts, form = when(t, t + US)
                    obj = base_obj("purchase")
                    price = rng.choice([15, 29.99, 30, 45.5, 89, 101, 150.25, 320])
                    props = {"sku": rng.choice(SKUS), "price": price,
                             "currency": rng.choice(["EUR", "USD", "GBP"])}
                    if rng.random() < 0.3:
                        props["coupon"] = rng.choice(COUPONS)
                    if rng.random() < 0.3:
                        props["items"] = ["gift"] if rng.random() < 0.5 else ["a", "b"]
                    obj["properties"] = props
                    if rng.random() < 0.6:
                        ltv = round(ltv + price, 2)
                        obj["traits"] = {"ltv": ltv}
                    emit(obj, ts, form)
        # logins
        for _l in range(rng.randrange(0, 12 if heavy else 5)):
            ts, form = when(first, BASE + span)
            emit(base_obj("login"), ts, form)
        # email opens
        for _m in range(rng.randrange(0, 8)):
            ts, form = when(first, BASE + span)
            obj = base_obj("email_open")
            props = {"subject": rng.choice(SUBJECTS)}
            if rng.random() < 0.5:
                props["campaign"] = rng.choice(["bf-2026", "digest", None])
            obj["properties"] = props
            emit(obj, ts, form)
        # trait updates, incl. null removal
        for _t in range(rng.randrange(0, 4)):
            ts, form = when(first + HOUR, BASE + span)
            obj = base_obj("profile")
            upd = {}
            choice = rng.random()
            if choice < 0.25:
                upd["email"] = None
            elif choice < 0.4:
                upd["phone"] = None
            elif choice < 0.6:
                upd["country"] = rng.choice(COUNTRIES)
            elif choice < 0.75:
                upd["plan"] = rng.choice(["free", "pro", "enterprise"])
            elif choice < 0.85:
                upd["tags"] = rng.sample(TAGS, rng.randrange(0, 3))
            else:
                upd["email"] = "new%d@%s" % (ui, rng.choice(DOMAINS))
                upd["score"] = round(rng.random(), 3)
            obj["traits"] = upd
            emit(obj, ts, form)

    # every timestamp form at least once on a valid record (a fixed extra user)
    t0 = BASE + 2 * DAY + 7 * HOUR
    forms = [(t0, "2026-11-03T07:00:00Z"), (t0 + 1 * HOUR + 500000, "2026-11-03T08:00:00.5Z"),
             (t0 + 2 * HOUR + 123000, "2026-11-03T10:00:00.123+01:00"),
             (t0 + 3 * HOUR, (t0 + 3 * HOUR) // US),
             (t0 + 4 * HOUR + 250000, (t0 + 4 * HOUR + 250000) / US),
             (t0 + 5 * HOUR + 7000, (t0 + 5 * HOUR + 7000) // 1000),
             (t0 + 6 * HOUR + 123456, "2026-11-03T13:00:00.123456Z")]
    for k, (us, text) in enumerate(forms):
        obj = {"event_id": "forms-%d" % k, "user_id": "u-forms", "event": "purchase", "ts": text,
               "received_at": _rfc(us + 2 * US), "properties": {"price": 30, "sku": "sku-1",
                                                             "currency": "EUR"}}
        if k == 0:
            obj["traits"] = {"email": "forms@example.com", "ltv": 900, "country": "DE"}
        records.append((obj, us + 2 * US))

    # duplicates
    dup_src = list(records)
    rng.shuffle(dup_src)
    n_dup = max(3, len(dup_src) // 30)
    extra = []

    def resend(obj, r, delta):
        o = dict(obj)
        nr = r + delta
        if outage and outage_lo <= nr < outage_hi:
            nr = outage_hi + US
        o["received_at"] = _rfc(nr) if nr % US == 0 else _rfc(nr, frac="us")
        extra.append((o, nr))
        return nr

    rest = dup_src[n_dup:]              # disjoint from the within-24 h duplicates
    with_id = [x for x in rest if "event_id" in x[0]]
    without_id = [x for x in rest if "event_id" not in x[0]]
    for o, r in dup_src[:n_dup]:
        resend(o, r, rng.randrange(60, 20 * 3600) * US)                # within 24 h: a duplicate
    for o, r in with_id[:2] + without_id[:2]:
        resend(o, r, rng.randrange(25 * 3600, 40 * 3600) * US)         # after 24 h: applied again
    for o, r in with_id[2:3] + without_id[2:3]:                        # run of 3: r, r+20h, r+40h
        resend(o, r, 20 * HOUR)
        resend(o, r, 40 * HOUR)
    records.extend(extra)

    lines = [json.dumps(o, ensure_ascii=False) for o, _r in records]

    if system:
        verbs = ["created", "updated", "deleted", "started", "syncing", "synced", "synccomplete",
                 "completed", "failed"]
        stypes = ["work", "work", "work", "segment", "user", "stream", "auth", "topic-document"]
        n_sys = max(12, days)
        sys_objs = []
        for k in range(n_sys):
            ts = BASE + rng.randrange(0, span // US) * US
            data = {"aid": 1234}
            notes = rng.choice(["ok", "=cmd|' /C calc'!A0", "-retry later", "rejected credentials",
                                None])
            if notes is not None:
                data["notes"] = notes
            if rng.random() < 0.9:
                data["subject_id"] = "w-%d" % rng.randrange(1, 5)
            data["subject_type"] = rng.choice(stypes)
            data["verb"] = "failed" if k % 4 == 0 else rng.choice(verbs)
            sid = k + 1 if k % 5 == 0 else "se-%d" % (k + 1)
            obj = {"kind": "system", "id": sid, "ts": _rfc(ts), "data": data}
            received = ts
            if rng.random() < 0.5:
                received = ts + rng.randrange(0, 600) * US
                obj["received_at"] = _rfc(received)
            sys_objs.append((obj, received))
        # duplicates: within 24 h and after 24 h
        o, r = sys_objs[1]
        d1 = dict(o)
        d1["received_at"] = _rfc(r + 3 * HOUR)
        o2, r2 = sys_objs[2]
        d2 = dict(o2)
        d2["received_at"] = _rfc(r2 + 30 * HOUR)
        sys_objs += [(d1, r + 3 * HOUR), (d2, r2 + 30 * HOUR)]
        lines += [json.dumps(o) for o, _ in sys_objs]

    if malformed:
        lines += [
            '{"user_id": "u0001", "event": "purchase", "ts": "2026-11-02T10:00:00Z"',   # truncated
            "hello world",
            "[1, 2, 3]",
            '{"user_id": "u0002", "event": "login"}',                                     # no ts
            '{"user_id": "u0003", "ts": "2026-11-02T10:00:00Z"}',                         # no event
            '{"event": "login", "ts": "2026-11-02T10:00:00Z"}',                           # no user
            '{"user_id": "u0004", "event": "login", "ts": "yesterday"}',
            '{"user_id": "u0004", "event": "login", "ts": ["2026-11-02T10:00:00Z"]}',
            '{"user_id": 42, "event": "login", "ts": "2026-11-02T10:00:00Z"}',
            '{"user_id": "u0005", "event": 7, "ts": "2026-11-02T10:00:00Z"}',
            '{"user_id": "u0005", "event": "page_view", "ts": "2026-11-02T10:00:00Z", '
            '"properties": "not-an-object"}',
            '{"user_id": "u0005", "event": "profile", "ts": "2026-11-02T10:00:00Z", "traits": [1]}',
            '{"user_id": "u0006", "event": "login", "ts": "2026-11-02T10:00:00Z", '
            '"received_at": "garbage"}',
            '{"kind": "system", "ts": "2026-11-02T10:00:00Z", "data": {"subject_type": "work", '
            '"verb": "failed"}}',                                                        # no id
            '{"kind": "system", "id": "se-x1", "ts": "2026-11-02T10:00:00Z", '
            '"data": {"subject_type": "work", "verb": "exploded"}}',                     # bad verb
            '{"kind": "system", "id": "se-x2", "ts": "2026-11-02T10:00:00Z", '
            '"data": {"subject_type": "spaceship", "verb": "failed"}}',                  # bad type
            '{"kind": "system", "id": "se-x3", "ts": "2026-11-02T10:00:00Z"}',           # no data
        ]
    rng.shuffle(lines)
    return config, lines


if __name__ == "__main__":     # python tests/datagen.py SEED OUTDIR [N_USERS]
    import os
    import sys
    import yaml
    seed = int(sys.argv[1])
    outdir = sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    os.makedirs(outdir, exist_ok=True)
    cfg, lns = generate(seed, n_users=n)
    with open(os.path.join(outdir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    with open(os.path.join(outdir, "events.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lns) + "\n")
    print(len(lns), "lines")
