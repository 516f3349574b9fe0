"""The benchmark still runs end to end, and stream and replay agree on its data (no timing asserted)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_runs_on_a_tiny_data_set_and_stream_equals_replay(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--events", "400", "--users", "20", "--days", "10",
         "--skip-1m", "--eventhubs-events", "300", "--repeat", "2", "--out", str(out),
         "--data", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["stream_equals_replay"] is True
    for kind in ("baseline", "stream", "replay"):
        figures = results["paths"][kind]
        assert figures["marginal_events_per_second"] > 0 and figures["peak_rss_mb_4N"] > 0
        assert [len(figures["runs_seconds"][size]) for size in ("tiny", "N", "4N")] == [2, 2, 2]
        runs = figures["runs_seconds"]["4N"]  # the time is their median: of two, the mean
        assert abs(figures["seconds_4N"] - sum(runs) / 2) < 0.02
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
