"""Deterministic benchmark data: ``python -m bench.make_data --events N --users U --days D --out F``."""
import argparse
import json
import random

EVENTS = ["page_view"] * 6 + ["purchase", "add_to_cart", "add_to_cart", "email_open", "profile"]
START = 1790000000  # 2026-09-21, epoch seconds


def generate(events, users, days, seed=11):
    rnd = random.Random(seed)
    for i in range(events):
        user = rnd.randrange(users)
        name = rnd.choice(EVENTS)
        record = {"event_id": "b%d-%d" % (seed, i), "event": name,
                  "ts": START + rnd.randrange(days * 86400)}
        if user % 10 == 0:
            record["anonymous_id"] = "anon%06d" % user
        else:
            record["user_id"] = "user%06d" % user
        if name in ("purchase", "add_to_cart"):
            record["properties"] = {"price": rnd.randint(1, 100), "sku": "sku%d" % rnd.randrange(50)}
        elif name == "email_open":
            record["properties"] = {"subject": rnd.choice(["Sale now", "News", "Sale ends"])}
        if name == "profile" or rnd.random() < 0.03:
            record["traits"] = {"ltv": rnd.randint(0, 1000), "country": rnd.choice(["US", "DE", "FR"]),
                                "email": "user%d@example.com" % user}
        record["received_at"] = record["ts"] + rnd.randint(0, 300)
        yield record


def write(path, events, users, days, seed=11):
    with open(path, "w", encoding="utf-8") as fh:
        for record in generate(events, users, days, seed):
            fh.write(json.dumps(record, separators=(",", ":")))
            fh.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=150000)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    write(args.out, args.events, args.users, args.days, args.seed)


if __name__ == "__main__":
    main()
