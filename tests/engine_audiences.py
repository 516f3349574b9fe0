"""The audience set the engine tests evaluate random histories against: counts with and without
a window, a count range, a property filter, traits, ``not``/``and``/``or``, audiences of
audiences, zero counts and ``"*"`` (every event name). Windows are 10 to 40 minutes."""

AUDIENCES = [
    {"id": "a1", "slug": "buyers3", "condition": {"event": "purchase", "within": "30m", "min_count": 3}},
    {"id": "a2", "slug": "one_or_two_views",
     "condition": {"event": "view", "within": "10m", "min_count": 1, "max_count": 2}},
    {"id": "a3", "slug": "gold_no_cheap",
     "condition": {"and": [{"trait": "tier", "op": "in", "value": ["gold", "platinum"]},
                           {"not": {"event": "purchase", "within": "20m",
                                    "where": {"property": "price", "op": "lt", "value": 10}}}]}},
    {"id": "a4", "slug": "ever_opened_or_buyer",
     "condition": {"or": [{"event": "email_open", "where": {"property": "subject", "op": "starts_with",
                                                             "value": "Sale"}},
                          {"audience": "buyers3"}]}},
    {"id": "a5", "slug": "never_viewed", "condition": {"event": "view", "min_count": 0, "max_count": 0}},
    {"id": "a6", "slug": "nested",
     "condition": {"and": [{"audience": "ever_opened_or_buyer"}, {"not": {"audience": "gold_no_cheap"}},
                           {"trait": "score", "op": "gte", "value": 5}]}},
    # "*" counts events of every name: no activity in 40 minutes, and 4+ events in 20 minutes.
    {"id": "a7", "slug": "inactive", "condition": {"not": {"event": "*", "within": "40m"}}},
    {"id": "a8", "slug": "busy", "condition": {"event": "*", "within": "20m", "min_count": 4}},
]
