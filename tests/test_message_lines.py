"""A local Event Hub sink's lines (core.messages): built, sorted, packed in runs and merged."""
import types

from hypothesis import given, settings, strategies as st


def test_message_lines_are_the_built_messages_encoded_and_sorted():
    from cdp_activation.core.workflows import EventHubSettings
    from cdp_activation.core.jsonlines import encode_sorted_lines
    from cdp_activation.core.messages import audience_names, build_message, message_lines, message_sort_key
    audiences = [types.SimpleNamespace(id="a%d" % i, slug="s%d" % i) for i in range(3)]
    settings = EventHubSettings(connection_string=None, subscription_id="sub", audiences=[0, 2],
                                existing_users=True, start=None, user_fields=None)
    day = 86_400_000_000
    users = [
        ("user_id", "u1", [(3 * day, [(0, "enter", 3 * day)], {"email": "x@y"}, day, 3 * day, False),
                           (2 * day, [(2, "enter", 2 * day), (0, "exit", day)], {}, day, 2 * day, False)]),
        ("anonymous_id", "a1", [(day, [(1, "enter", day)], {}, day, day, False)]),  # not exported
        ("user_id", "u2", []),
    ]
    got = message_lines(settings, audience_names(audiences), users)
    expected = []
    for key_field, key, changes in users:
        messages = [m for m in (build_message(c, key_field, key, settings, audiences) for c in changes)
                    if m is not None]
        expected.append(encode_sorted_lines(messages, message_sort_key))
    assert got == expected
    assert [len(lines) for lines in got] == [2, 0, 0]
    assert all(line.endswith(b"\n") for _, line in got[0])


_KEYS = st.sampled_from(["", "u1", "u2", "\u00e9", "a\x00b", "a", "\U0001f600"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_KEYS, _KEYS, st.integers(0, 5), st.integers(0, 999_999), st.booleans(),
                          st.sampled_from([None, 7, "x\ny", "\u2028"]), st.integers(0, 4)),
                max_size=40),
       st.integers(1, 5))
def test_merged_runs_are_the_lines_sorted_by_message_key(specs, n_runs):
    """Whatever batches the messages fall in, a user's in one run or spread over several (a user
    evaluated more than once), the merged runs are the lines in ``message_sort_key`` order."""
    from cdp_activation.core.jsonlines import encode_sorted_lines
    from cdp_activation.core.messages import (merge_message_line_runs, message_id, message_sort_key,
                               pack_message_lines)
    runs = [[] for _ in range(n_runs)]
    everything = []
    for user_id, anonymous_id, second, micros, backfill, trait, run in specs:
        data = {"user_id": user_id} if user_id else {}
        if anonymous_id:
            data["anonymous_id"] = anonymous_id
        if trait is not None:
            data["note"] = trait
        message = {"data": data, "subscription_id": "s",
                   "timestamp": "2026-01-01T00:00:%02d.%06dZ" % (second, micros)}
        if backfill:
            message["backfill"] = True
        message["message_id"] = message_id(message)
        pair = encode_sorted_lines([message], message_sort_key)[0]
        runs[run % n_runs].append(pair)
        everything.append(pair)
    packed = [pack_message_lines(pairs) for pairs in runs if pairs]
    merged = merge_message_line_runs(packed)
    assert b"".join(merged) == b"".join(line for _, line in sorted(everything, key=lambda p: p[0]))
    assert all(chunk.endswith(b"\n") for chunk in merged)


def test_a_run_of_many_messages_is_compressed():
    """Runs cross Beam's data plane on their way to the sink: they go compressed."""
    from cdp_activation.core.jsonlines import encode_sorted_lines
    from cdp_activation.core.messages import merge_message_line_runs, message_id, message_sort_key, pack_message_lines
    messages = []
    for i in range(2000):
        message = {"data": {"user_id": "user%06d" % (i // 4), "segment_events": [
            {"id": "fb", "slug": "frequent_buyers", "event": "enter"}]},
            "subscription_id": "w-eh", "timestamp": "2026-01-01T00:%02d:%02dZ" % (i % 60, i % 57)}
        message["message_id"] = message_id(message)
        messages.append(message)
    pairs = encode_sorted_lines(messages, message_sort_key)
    lines = b"".join(line for _, line in pairs)
    run = pack_message_lines(pairs)
    assert len(run) < len(lines) / 3
    assert b"".join(merge_message_line_runs([run])) == b"".join(
        line for _, line in sorted(pairs, key=lambda p: p[0]))
