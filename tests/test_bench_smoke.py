"""The benchmark still runs end to end, and stream and replay agree on its data (no timing asserted)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_runs_on_a_tiny_data_set_and_stream_equals_replay(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--events", "400", "--users", "20", "--days", "10",
         "--skip-1m", "--eventhubs-events", "300", "--repeat", "1", "--branches", "1",
         "--out", str(out),
         "--data", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=850)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["stream_equals_replay"] is True
    for kind in ("baseline", "stream", "replay"):
        figures = results["paths"][kind]
        assert figures["marginal_events_per_second"] > 0 and figures["peak_rss_mb_4N"] > 0
        assert [len(figures["runs_seconds"][size]) for size in ("tiny", "N", "4N")] == [1, 1, 1]
        assert figures["seconds_4N"] == figures["runs_seconds"]["4N"][0] == figures["median"]["seconds_4N"]
        assert figures["runs_cpu_seconds"]["4N"][0] > 0 and "cpu_linearity" in figures
        parts = figures["cpu_us_per_event"]
        assert abs(sum(v for k, v in parts.items() if k != "total") - parts["total"]) < 0.1
    assert results["replay_target_cpu_us_per_event"] > 0
    # The whole job wrote every branch's outputs, and each branch was also timed alone.
    outputs = os.listdir(tmp_path / "data" / "out-replay-N")
    assert {"eventhub", "blob"} <= set(outputs)
    assert results["output_files_N"] > 2
    assert set(results["branches"]) == {"audiences", "blob", "alerts"}
    for kinds in results["branches"].values():
        assert kinds["replay"]["marginal_events_per_second"] > 0
        assert kinds["stream"]["marginal_events_per_second"] > 0
    assert results["paths"]["core"]["state_bytes_median"] > 0
    # The profile attributes time to the project's components, not only to "other".
    for kind in ("replay", "stream"):
        shares = results["profile_N"][kind]
        assert shares.get("engine", 0) > 0 and shares.get("parse", 0) > 0
        assert abs(sum(shares.values()) - 1) < 0.01
    assert results["eventhubs_catchup"]["events"] == 300
    assert results["eventhubs_catchup"]["pipeline_events_per_second"] > 0
    # The messages compared are not empty: the check above compared something.
    messages = (tmp_path / "data" / "out-replay-N" / "eventhub" / "w-eh.jsonl").read_text().splitlines()
    assert messages
    assert "| replay |" in result.stdout and "stream == replay: True" in result.stdout
    assert "marginal CPU per event" in result.stdout


def test_figures_use_each_size_s_fastest_run_and_keep_the_medians():
    from bench.run import summarise
    walls = {"tiny": [2.0, 3.0, 2.5], "N": [5.0, 4.0, 4.5], "4N": [10.0, 13.0, 11.0]}
    figures = summarise(walls, 150000)
    assert (figures["startup_seconds"], figures["seconds_N"], figures["seconds_4N"]) == (2.0, 4.0, 10.0)
    assert figures["marginal_events_per_second"] == 75000  # 450k events in 6 s
    assert figures["linearity"] == 4.0  # (10 - 2) / (4 - 2)
    median = figures["median"]
    assert (median["startup_seconds"], median["seconds_N"], median["seconds_4N"]) == (2.5, 4.5, 11.0)
    assert median["marginal_events_per_second"] == 69231 and median["linearity"] == 4.25
    assert figures["runs_seconds"] == walls
    assert "cpu_linearity" not in figures  # no CPU times given


def test_cpu_linearity_is_taken_off_start_up_like_the_wall_figure():
    from bench.run import summarise
    walls = {"tiny": [2.0], "N": [4.0], "4N": [10.0]}
    cpus = {"tiny": [2.5, 2.0], "N": [5.0, 5.5], "4N": [14.0, 15.5]}
    figures = summarise(walls, 150000, cpus)
    assert figures["cpu_linearity"] == 4.0  # (14 - 2) / (5 - 2)
    assert figures["median"]["cpu_linearity"] == 4.17  # (14.75 - 2.25) / (5.25 - 2.25)
    assert figures["runs_cpu_seconds"] == cpus


def test_cpu_per_event_splits_the_least_cpu_run_of_each_size_into_parts_that_add_up():
    from bench.run import cpu_per_event

    def run(total, own):
        return {"cpu_seconds": total, "self_cpu_seconds": own}

    runs = {"N": [run(6.0, 3.0), run(5.0, 2.8)], "4N": [run(14.0, 5.2), run(15.0, 4.0)]}
    per_event = cpu_per_event(runs, 100000)
    # N takes its 5.0 s run, 4N its 14.0 s run; microseconds = seconds / 300k events * 1e6.
    assert per_event == {"pipeline's process": 8.0, "child processes": 22.0, "total": 30.0}
    # A run that reports no child's time (the baseline's measure) is all the pipeline's process.
    alone = {"N": [{"cpu_seconds": 3.0}], "4N": [{"cpu_seconds": 9.0}]}
    assert cpu_per_event(alone, 100000) == {"pipeline's process": 20.0, "child processes": 0.0,
                                             "total": 20.0}
