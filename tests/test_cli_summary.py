"""The run summary tells the truth: counts that match the files, every figure printed, plain dates."""
import json

import pytest

from bench.make_data import write
from tests.commands import FREQUENT_BUYERS, HIGH_VALUE, job_config, run_pipeline

CONFIG = job_config([FREQUENT_BUYERS, HIGH_VALUE], ["""\
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${EH_CS}", user_fields: [email]}
  - id: w-blob
    workflow: azure_blob_event_export
    config: {connection_string: "${BLOB_CS}", container: exports, period_hours: 24}
"""])


def run(command, tmp_path, name, env, *extra):
    return run_pipeline(command, tmp_path, name, *extra, env=env)


def dead_letter_lines(path):
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def failed_events(path, work_id):
    return [r for r in map(json.loads, path.read_text().splitlines())
            if r["data"].get("verb") == "failed" and r["data"].get("subject_id") == work_id]


@pytest.mark.parametrize("command", ["stream", "replay"])
def test_rejected_credentials_counts_equal_the_dead_letter_files(tmp_path, local_eventhubs, azurite,
                                                                  command):
    (tmp_path / "config.yaml").write_text(CONFIG)
    write(str(tmp_path / "events.jsonl"), 2000, 100, 20)
    env = {"EH_CS": local_eventhubs.connection_string_with(key="d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZw=="),
           "BLOB_CS": azurite.wrong_key_connection_string}
    result = run(command, tmp_path, "out", env)
    assert result.returncode == 1, result.stderr
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    kept = {w: dead_letter_lines(out / "deadletter" / (w + ".jsonl")) for w in ("w-eh", "w-blob")}
    # The Event Hub work keeps every message it could not send; the Blob export keeps its rows
    # for the catch-up (nothing dead-lettered) and says it failed.
    assert kept["w-eh"] > 50 and kept["w-blob"] == 0
    for work_id in ("w-eh", "w-blob"):
        entry = summary["works"][work_id]
        assert entry["deadlettered"] == kept[work_id], (work_id, entry)
        assert entry["failures"] == len(failed_events(out / "system_events.jsonl", work_id)) == 1
        line = next(l for l in result.stdout.splitlines() if l.strip().startswith(work_id + " "))
        assert "deadlettered %d, failures 1" % kept[work_id] in line, line


def test_summary_prints_outside_time_range_and_takes_plain_dates(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG.split("works:")[0] + "works: []\n")
    lines = [{"user_id": "u1", "event": "purchase", "ts": "2026-11-%02dT12:00:00Z" % day}
             for day in (19, 20, 20, 21, 22)]
    for i, record in enumerate(lines):
        record["event_id"] = "e%d" % i
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = run("replay", tmp_path, "out", {}, "--start", "2026-11-20", "--end", "2026-11-21")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["records_read"] == 5 and summary["outside_time_range"] == 3
    assert "outside time range 3" in result.stdout
    # A date and its RFC 3339 midnight are the same bound.
    again = run("replay", tmp_path, "again", {}, "--start", "2026-11-20T00:00:00Z",
                "--end", "1795219200")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["outside_time_range"] == 3
    bad = run("replay", tmp_path, "bad", {}, "--start", "2026-11-31")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --start: ")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
