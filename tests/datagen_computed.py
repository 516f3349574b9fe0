"""The computed traits of the random acceptance data's config (tests/datagen.py): every op,
windowed and all time, with ``where``, a dotted property and ``event: "*"``, and the audiences
that read them (``(id, slug, name, condition)``, appended to the config's audiences)."""

COMPUTED_TRAITS = {
    "spend_7d": {"op": "sum", "event": "purchase", "property": "price", "within": "7d"},
    "orders": {"op": "count", "event": "purchase"},
    "avg_cart_3d": {"op": "avg", "event": "add_to_cart", "property": "price", "within": "3d"},
    "max_price": {"op": "max", "event": "*", "property": "price"},
    "min_cart_1d": {"op": "min", "event": "add_to_cart", "property": "price", "within": "1d"},
    "first_sku": {"op": "first", "event": "*", "property": "sku"},
    "last_subject_2d": {"op": "last", "event": "email_open", "property": "subject",
                        "within": "2d"},
    "eur_spend": {"op": "sum", "event": "purchase", "property": "price",
                  "where": {"property": "currency", "op": "eq", "value": "EUR"}},
    "shoe_searches_12h": {"op": "count", "event": "search", "within": "12h",
                          "where": {"property": "product.category", "op": "eq",
                                    "value": "shoes"}},
    "last_category": {"op": "last", "event": "search", "property": "product.category"},
}

COMPUTED_AUDIENCES = [
    ("a1f0c0de21", "spenders_7d", "Spent 300+ in 7 days",
        {"computed": "spend_7d", "op": "gte", "value": 300}),
    ("a1f0c0de22", "cheap_carts", "Average cart under 60 in 3 days, a cart today",
        {"and": [{"computed": "avg_cart_3d", "op": "lt", "value": 60},
                 {"computed": "min_cart_1d", "op": "exists"}]}),
    ("a1f0c0de23", "sale_readers", "Last email opened in 2 days was a sale",
        {"computed": "last_subject_2d", "op": "starts_with", "value": "Sale"}),
    ("a1f0c0de24", "loyal_first_sku", "3+ orders, first sku 1 or 2",
        {"and": [{"computed": "orders", "op": "gte", "value": 3},
                 {"computed": "first_sku", "op": "in", "value": ["sku-1", "sku-2"]}]}),
    ("a1f0c0de25", "eur_big", "Over 100 EUR ever, no shoe search in 12 h",
        {"and": [{"computed": "eur_spend", "op": "gt", "value": 100},
                 {"not": {"computed": "shoe_searches_12h", "op": "gte", "value": 1}},
                 {"computed": "max_price", "op": "lte", "value": 250}]}),
]
