"""bench/prism_latency.py's figures from what was enqueued and what arrived (pure; the command
itself starts Prism and runs for minutes, so it is not run here)."""
import json

from bench.prism_latency import figures, past_window, sustained
from emulators.eventhubs import partition_for_key
from emulators.run_live import _rfc

T0 = 1796000000.0     # 2026-12-01T...: a window [T0, T0 + 60)


def _message(user, slug, kind, at):
    change = {"slug": slug, "event": kind, "enter": _rfc(at if kind == "enter" else at - 30),
              "exit": _rfc(at) if kind == "exit" else "2099-12-31T23:59:59Z"}
    return json.dumps({"data": {"user_id": user, "segment_events": [change]}})


def test_enters_and_event_exits_count_from_their_cause_delayed_exits_from_their_due_time():
    enqueued = {("u1", _rfc(T0 + 10)): T0 + 10.2,      # a purchase: u1 enters
                ("u2", _rfc(T0 + 20)): T0 + 20.1,      # an add to cart: u2 enters
                ("u2", _rfc(T0 + 25)): T0 + 25.3}      # a purchase: u2 exits at once
    arrivals = [
        (_message("u1", "recent_buyers", "enter", T0 + 10), T0 + 12.2, T0 + 12.5),
        (_message("u2", "cart_abandoners", "enter", T0 + 20), T0 + 21.1, T0 + 21.4),
        (_message("u2", "cart_abandoners", "exit", T0 + 25), T0 + 26.3, T0 + 26.4),
        # delayed exits (no event at their time): one on time, one fired 20 s early
        (_message("u1", "recent_buyers", "exit", T0 + 40), T0 + 43.0, T0 + 43.5),
        (_message("u3", "recent_buyers", "exit", T0 + 50), T0 + 30.0, T0 + 30.5),
        # outside the window: not counted
        (_message("u4", "recent_buyers", "enter", T0 - 5), T0 - 3.0, T0 - 2.5),
        (_message("u4", "recent_buyers", "exit", T0 + 70), T0 + 73.0, T0 + 73.1),
    ]
    result = figures(enqueued, arrivals, T0, T0 + 60)
    assert result["messages"] == 7
    enter = result["enter_latency_s"]
    assert enter["count"] == 2 and round(enter["max"], 6) == 2.0
    assert round(result["enter_latency_at_receipt_s"]["max"], 6) == 2.3
    assert result["exit_latency_s"]["count"] == 1
    assert round(result["exit_latency_s"]["p50"], 6) == 1.0
    delayed = result["delayed_exit_lateness_s"]
    assert delayed["count"] == 2 and delayed["early"] == 1
    assert round(delayed["p50"], 6) == -20.0 and round(delayed["max"], 6) == 3.0
    assert result["delayed_enter_lateness_s"]["count"] == 0
    # both enters are in the window's first half (2.0 and 1.0 s), none in its second
    first, second = result["enter_latency_p50_by_half_s"]
    assert round(first, 6) == 1.0 and second is None


def _user_in(partition):
    return next("cust-%d" % n for n in range(1000) if partition_for_key("cust-%d" % n, 4) == partition)


def test_the_window_is_past_once_every_partition_has_a_later_enter_on_time_and_an_exit_came():
    end = T0 + 60
    assert not past_window({"enter": [], "exit": []}, end)
    seen = {"enter": [(_user_in(p), end + 3, end + 5) for p in range(3)], "exit": []}
    seen["exit"].append(("u9", end + 30, end + 6))
    assert not past_window(seen, end)           # partition 3 not read past the window yet
    seen["enter"].append((_user_in(3), end + 4, end + 7))
    assert past_window(seen, end)
    # An enter received before its time (a timer fired early) does not show the input was read.
    early = dict(seen, enter=seen["enter"][:3] + [(_user_in(3), end + 4, end - 1)])
    assert not past_window(early, end)
    assert not past_window(dict(seen, exit=[]), end)


def test_a_rate_is_sustained_when_reached_and_the_enters_arrive_within_the_bound():
    assert sustained(1000, 990.0, True, 4.5, 10.0)
    assert not sustained(1000, 900.0, True, 4.5, 10.0)    # the publisher fell short
    assert not sustained(1000, 990.0, False, 4.5, 10.0)   # the output never passed the window
    assert not sustained(1000, 990.0, True, 38.0, 10.0)   # enters wait in a backlog
    assert not sustained(1000, 990.0, True, None, 10.0)   # no enter arrived
