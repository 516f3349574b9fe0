#!/usr/bin/env python3
"""Make the deterministic sample data set for examples/config.yaml.

    python examples/make_sample_data.py [--out examples/events.jsonl] [--users 500] [--days 30]
                                        [--seed 7]

An online shop (account acme, aid 1234) from 2026-11-01 on: known customers and anonymous visitors
browse (page_view, product_view, search), fill carts (add_to_cart), buy (purchase, which also
updates the `lifetime_spend` trait), open and click e-mails (email_open, email_click) and log in;
`profile` events set or remove traits (a null removes one). The file also holds a few malformed
lines (they go to the dead-letter output), duplicates (a client retry within 24 hours), events
without event_id, millisecond epoch timestamps from the mobile SDK, and system events, among them a
failed work that the `w-alerts` work turns into a Slack-style alert.

Only the standard library is used, so this runs before the project is installed.
"""

import argparse
import datetime as dt
import json
import os
import random

BASE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)

COUNTRIES = ["US", "US", "DE", "FR", "GB", "CA", "ES", "NL", "BR", "JP"]
FIRST = ["Ada", "Ben", "Chloé", "Diego", "Emma", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kara", "Liam", "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Sam", "Tara"]
LAST = ["Smith", "Müller", "Martin", "García", "Rossi", "Tanaka", "Silva", "Jansen", "Kowalski"]
PRODUCTS = [("sku-1001", "Trail running shoes", 129.0), ("sku-1002", "Rain jacket", 89.5),
            ("sku-1003", "Wool socks", 12.99), ("sku-1004", "Leather boots", 210.0),
            ("sku-1005", "Sun hat", 24.0), ("sku-1006", "Backpack 30L", 75.0),
            ("sku-1007", "Water bottle", 18.5), ("sku-1008", "Fleece hoodie", 59.9)]
PAGES = ["/", "/new", "/sale", "/shoes", "/outerwear", "/accessories", "/cart", "/checkout",
         "/account", "/blog/winter-hiking"]
SUBJECTS = ["Sale: 30% off winter boots", "Sale ends tonight", "Your weekly picks",
            "New arrivals for the trail", "We miss you", "Sale: free shipping weekend"]
SEARCHES = ["boots", "rain jacket", "socks", "gift ideas", "backpack", "hat"]
COUPONS = ["WELCOME10", "WINTER15", "FREESHIP"]


def iso(t):
    """RFC 3339 UTC with Z; milliseconds when the time has them."""
    s = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        s += ".%03d" % (t.microsecond // 1000)
    return s + "Z"


class Shop:
    def __init__(self, rng, days):
        self.rng = rng
        self.end = BASE + dt.timedelta(days=days)
        self.days = days
        self.records = []          # (received_at datetime, dict)
        self.n = 0

    def stamp(self, t, mobile):
        """ts in one of the accepted forms: mobile SDKs send epoch milliseconds."""
        t = t.replace(microsecond=(t.microsecond // 1000) * 1000)
        if mobile:
            return int(t.timestamp() * 1000)
        return iso(t)

    def emit(self, who, name, t, props=None, traits=None, mobile=False):
        rng = self.rng
        self.n += 1
        rec = {}
        if rng.random() < 0.9:
            rec["event_id"] = "evt-%06d" % self.n
        rec.update(who)
        rec["event"] = name
        rec["ts"] = self.stamp(t, mobile)
        received = t + dt.timedelta(milliseconds=rng.randrange(50, 4000))
        if rng.random() < 0.03:
            received += dt.timedelta(minutes=rng.randrange(5, 180))   # late batch upload
        if rng.random() < 0.9:
            rec["received_at"] = iso(received)
        else:
            received = t.replace(microsecond=(t.microsecond // 1000) * 1000)
        if props:
            rec["properties"] = props
        if traits:
            rec["traits"] = traits
        self.records.append((received, rec))
        # a client retry: the same record again within 24 hours (deduplicated)
        if rng.random() < 0.01:
            again = dict(rec)
            r2 = received + dt.timedelta(seconds=rng.randrange(30, 6 * 3600))
            again["received_at"] = iso(r2)
            self.records.append((r2, again))
        return rec

    def rand_time(self, lo, hi):
        span = max(1, int((hi - lo).total_seconds()))
        return lo + dt.timedelta(seconds=self.rng.randrange(span),
                                 milliseconds=self.rng.randrange(1000))

    def customer(self, i):
        rng = self.rng
        known = rng.random() < 0.8
        who = {"user_id": "cust-%05d" % i} if known else {"anonymous_id": "anon-%08x" %
                                                           rng.getrandbits(32)}
        mobile = rng.random() < 0.25
        kind = rng.choices(["loyal", "regular", "casual", "one_time"], [0.12, 0.3, 0.38, 0.2])[0]
        first = self.rand_time(BASE, BASE + dt.timedelta(days=max(1, self.days * 2 // 3)))
        spend = 0.0
        if known:
            fn, ln = rng.choice(FIRST), rng.choice(LAST)
            traits = {"first_name": fn, "last_name": ln, "country": rng.choice(COUNTRIES),
                      "plan": rng.choice(["free", "free", "member", "premium"]),
                      "lifetime_spend": 0}
            if rng.random() < 0.9:
                slug = fn.lower().encode("ascii", "ignore").decode()
                traits["email"] = "%s.%s%d@example.com" % (slug, ln.lower()[:3].encode(
                    "ascii", "ignore").decode(), i)
            if kind == "loyal":
                spend = float(rng.choice([300, 450, 600, 900]))
                traits["lifetime_spend"] = spend
            self.emit(who, "profile", first, traits=traits, mobile=mobile)
        visits = {"loyal": (10, 25), "regular": (4, 10), "casual": (1, 4), "one_time": (1, 2)}[kind]
        buy_p = {"loyal": 0.7, "regular": 0.35, "casual": 0.15, "one_time": 0.3}[kind]
        for _v in range(rng.randrange(*visits)):
            t = self.rand_time(first, self.end)
            for _p in range(rng.randrange(1, 5)):
                t += dt.timedelta(seconds=rng.randrange(5, 300))
                props = {"url": rng.choice(PAGES)}
                if rng.random() < 0.5:
                    props["referrer"] = rng.choice(["google", "newsletter", "instagram"])
                self.emit(who, "page_view", t, props, mobile=mobile)
            if rng.random() < 0.3:
                t += dt.timedelta(seconds=rng.randrange(5, 120))
                self.emit(who, "search", t, {"query": rng.choice(SEARCHES)}, mobile=mobile)
            if rng.random() < 0.6:
                sku, title, price = rng.choice(PRODUCTS)
                t += dt.timedelta(seconds=rng.randrange(5, 300))
                self.emit(who, "product_view", t, {"sku": sku, "title": title, "price": price},
                          mobile=mobile)
                if rng.random() < 0.6:
                    qty = rng.choice([1, 1, 1, 2])
                    t += dt.timedelta(seconds=rng.randrange(5, 300))
                    self.emit(who, "add_to_cart", t,
                              {"sku": sku, "price": price, "quantity": qty}, mobile=mobile)
                    if rng.random() < buy_p:
                        t += dt.timedelta(seconds=rng.randrange(60, 1800))
                        total = round(price * qty, 2)
                        props = {"order_id": "ord-%06d" % (self.n + 1), "sku": sku,
                                 "price": total, "currency": rng.choice(["USD", "EUR", "GBP"])}
                        if rng.random() < 0.25:
                            props["coupon"] = rng.choice(COUPONS)
                        traits = None
                        if known:
                            spend = round(spend + total, 2)
                            traits = {"lifetime_spend": spend}
                        if t < self.end:
                            self.emit(who, "purchase", t, props, traits, mobile=mobile)
        if known:
            for _m in range(rng.randrange(0, 10)):
                t = self.rand_time(first, self.end)
                subject = rng.choice(SUBJECTS)
                self.emit(who, "email_open", t, {"subject": subject, "campaign": "c-%d" %
                                                 (SUBJECTS.index(subject) + 1)})
                if rng.random() < 0.3:
                    self.emit(who, "email_click", t + dt.timedelta(seconds=rng.randrange(5, 600)),
                              {"subject": subject, "url": rng.choice(PAGES)})
            for _l in range(rng.randrange(0, 6)):
                self.emit(who, "login", self.rand_time(first, self.end), mobile=mobile)
            r = rng.random()
            if r < 0.1:     # unsubscribed: the e-mail trait is removed
                self.emit(who, "profile", self.rand_time(first, self.end), traits={"email": None})
            elif r < 0.2:   # moved
                self.emit(who, "profile", self.rand_time(first, self.end),
                          traits={"country": rng.choice(COUNTRIES)})

    def system_events(self):
        rng = self.rng
        out = []
        works = ["w-eventhub", "w-blob", "w-import-crm", "w-alerts"]
        for k in range(max(6, self.days)):
            t = self.rand_time(BASE, self.end)
            verb = rng.choice(["started", "synced", "synccomplete", "completed", "updated"])
            out.append({"kind": "system", "id": "se-%04d" % (k + 1), "ts": iso(t),
                        "data": {"aid": 1234, "subject_type": "work",
                                 "subject_id": rng.choice(works), "verb": verb}})
        t = BASE + dt.timedelta(days=min(12, self.days - 1), hours=3, minutes=17)
        out.append({"kind": "system", "id": "se-fail-1", "ts": iso(t),
                    "data": {"aid": 1234, "subject_type": "work", "subject_id": "w-import-crm",
                             "verb": "failed", "notes": "CRM API returned 401 Unauthorized"}})
        out.append({"kind": "system", "id": "se-seg-1", "ts": iso(t + dt.timedelta(hours=1)),
                    "data": {"aid": 1234, "subject_type": "segment", "subject_id": "vip",
                             "verb": "updated", "notes": "condition edited"}})
        # the failed event delivered twice by the source: one alert only
        dup = dict(out[-2])
        dup["received_at"] = iso(t + dt.timedelta(minutes=10))
        out.append(dup)
        for rec in out:
            received = rec.get("received_at", rec["ts"])
            self.records.append((dt.datetime.strptime(received[:19], "%Y-%m-%dT%H:%M:%S")
                                 .replace(tzinfo=dt.timezone.utc), rec))


BAD_LINES = [
    '{"user_id": "cust-00001", "event": "purchase", "ts": "2026-11-03T10:00:00Z"',  # cut off
    'GET /collect?e=page_view HTTP/1.1',                                           # not JSON
    '{"user_id": "cust-00002", "event": "login"}',                                 # no ts
    '{"event": "page_view", "ts": "2026-11-04T08:00:00Z", "properties": {"url": "/"}}',  # no user
    '{"user_id": "cust-00003", "event": "purchase", "ts": "next tuesday"}',        # bad ts
    '{"user_id": "cust-00004", "event": "add_to_cart", "ts": "2026-11-05T12:00:00Z", '
    '"properties": "sku-1001"}',                                                   # wrong type
]


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 epilog="example: python examples/make_sample_data.py --out "
                                        "/tmp/events.jsonl --users 3000")
    ap.add_argument("--out", default=os.path.join(here, "events.jsonl"),
                    help="file to write (default examples/events.jsonl), e.g. --out /tmp/events.jsonl")
    ap.add_argument("--users", type=int, default=500,
                    help="number of customers (default 500), e.g. --users 3000")
    ap.add_argument("--days", type=int, default=30,
                    help="days of activity from 2026-11-01 (default 30), e.g. --days 60")
    ap.add_argument("--seed", type=int, default=7,
                    help="random seed; the same seed gives the same file (default 7), e.g. --seed 1")
    args = ap.parse_args(argv)
    if args.users < 1 or args.days < 2:
        ap.error("--users must be >= 1 and --days >= 2")
    rng = random.Random(args.seed)
    shop = Shop(rng, args.days)
    for i in range(1, args.users + 1):
        shop.customer(i)
    shop.system_events()
    # arrival order: by received_at
    shop.records.sort(key=lambda r: (r[0], r[1].get("event_id", ""), r[1].get("id", "")))
    lines = [json.dumps(rec, ensure_ascii=False) for _r, rec in shop.records]
    for bad in BAD_LINES:
        lines.insert(rng.randrange(len(lines) + 1), bad)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    n_sys = sum(1 for _r, rec in shop.records if rec.get("kind") == "system")
    print("wrote %s: %d lines (%d users, %d days, %d system events, %d malformed)" % (
        args.out, len(lines), args.users, args.days, n_sys, len(BAD_LINES)))


if __name__ == "__main__":
    main()
