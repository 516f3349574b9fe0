"""``bench.targets``: each target of issue 21 is met, missed or not measured, and a missed one says
why from the run's own figures."""
from bench.targets import check_targets, format_targets


def _results(replay_ratio, stream_ratio, rss=None, scaling=None, profile=None):
    paths = {
        "baseline": {"marginal_events_per_second": 20000, "linearity": 3.9,
                     "cpu_us_per_event": {"total": 50.0}},
        "stream": {"ratio_to_baseline": stream_ratio, "linearity": 4.0, "cpu_us_per_event": {"total": 98.0}},
        "replay": {"ratio_to_baseline": replay_ratio, "linearity": 4.6, "cpu_linearity": 3.8, "cpu_us_per_event": {"total": 64.0}},
        "core": {"parse_events_per_second": 100000, "state_bytes_median": 600},
    }
    results = {"paths": paths, "machine": {"cpus": 2}}
    if rss is not None:
        results["replay_1m"] = {"seconds": 80.0, "peak_rss_mb": rss}
    if scaling is not None:
        roles = {"job_server": 100.0, "sdk_workers": 60.0, "total": 160.0}
        results["flink"] = {"scaling": {"from": 1, "to": 2, "ratio": scaling},
                            "paths": {kind: {p: {"cpu_us_per_event_by_role": roles} for p in ("p1", "p2")}
                                      for kind in ("stream", "replay")}}
    if profile is not None:
        results["profile_N"] = profile
    return results


def _by_name(results):
    return {target.name: target for target in check_targets(results)}


def test_each_target_is_met_missed_or_not_measured_by_its_bound():
    targets = _by_name(_results(10.0, 2.99, rss=2048.5))
    assert targets["replay speed"].met is True and targets["replay speed"].why == ""
    assert targets["stream speed"].met is False
    assert targets["1M events"].met is False and targets["1M events"].measured == "2048 MB in 80.0 s"
    assert targets["state per user"].met is True
    assert targets["stream linearity"].met is True and targets["replay linearity"].met is False
    # No Flink run and no 1M run: not measured, never met.
    assert targets["Flink stream p2/p1"].met is None
    assert _by_name(_results(10.0, 3.0))["1M events"].met is None


def test_a_missed_speed_target_is_explained_by_the_cpu_each_event_costs_against_what_the_target_leaves():
    results = _results(0.82, 0.54, profile={"replay": {"parse": 0.16, "beam": 0.16, "engine": 0.13},
                                            "stream": {"state": 0.3}})
    why = _by_name(results)["replay speed"].why
    # 10x a 20,000 ev/s baseline on 2 CPUs leaves 1e6 * 2 / 200,000 = 10 us per event.
    assert "replay costs 64.0 us of CPU per event" in why and "leaves 10.0 us per event with all 2 CPUs" in why
    assert "parsing a record alone costs 10.0 us" in why
    assert "profile at N: parse 16%, beam 16%, engine 13%" in why
    assert "3x the baseline's rate leaves 33.3 us" in _by_name(results)["stream speed"].why


def test_flink_scaling_is_checked_from_p1_to_p2_and_a_miss_shows_the_cpu_by_process():
    targets = _by_name(_results(12.0, 4.0, scaling={"stream": 1.03, "replay": 1.7, "baseline": 2.0}))
    assert targets["Flink replay p2/p1"].met is True
    stream = targets["Flink stream p2/p1"]
    assert stream.met is False and stream.measured == "1.03x"
    assert "p1 CPU per event by process: job_server 100.0 us, sdk_workers 60.0 us" in stream.why


def test_the_printed_lines_hold_a_row_per_target_and_a_reason_per_miss():
    lines = format_targets(_results(0.82, 0.54, rss=1248.0))
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| target", "| ---"))]
    assert len(rows) == len(check_targets(_results(0.82, 0.54, rss=1248.0))) == 8
    assert "| 1M events | peak RSS <= 2048 MB | 1248 MB in 80.0 s | met |" in lines
    assert "| replay speed | >= 10x the baseline (DirectRunner) | 0.82x | **not met** |" in lines
    assert "why replay linearity misses its target: in CPU time t(4N)/t(N) is 3.80" in "\n".join(lines)
    whys = [line for line in lines if line.startswith("why ")]
    assert [line.split(" misses")[0] for line in whys] == ["why replay speed", "why stream speed",
                                                          "why replay linearity"]
