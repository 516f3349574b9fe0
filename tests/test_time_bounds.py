"""Inputs that cannot hurt (issue 18, points 3 and 9), run as a user runs them.

A record dated 9999 must not make an hourly export write millions of files; records whose ``ts``
is before 2000 or far after their ``received_at`` are dead-lettered with the reason; a line that
is not UTF-8 keeps its bytes. Outputs are compared with the independent reference
(``tests/reference.py``), which implements the same rules from the contract.
"""
import base64
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests import reference as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blob_config(period_hours=1, **extra):
    config = {"account": {"name": "acme", "aid": 1},
              "audiences": [{"id": "fb1", "slug": "buyers",
                             "condition": {"event": "purchase", "within": "7d", "min_count": 2}}],
              "works": [{"id": "w-blob", "workflow": "azure_blob_event_export",
                         "config": dict({"container": "exports", "period_hours": period_hours,
                                         "format": "csv"}, **extra)}]}
    return config


def run(tmp_path, command, config, lines, name="out"):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    data = tmp_path / "events.jsonl"
    data.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode("utf-8")) + b"\n"
                              for l in lines))
    out = tmp_path / name
    # The timeout only ends a run that would go on for ever (before: 1.6 million files).
    result = subprocess.run([sys.executable, "-m", "pipelines." + command, "--config",
                             str(tmp_path / "config.yaml"), "--input", str(data),
                             "--output_dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    return result, out


def blob_files(out):
    root = out / "blob" / "exports"
    return {p.relative_to(root).as_posix(): R.parse_csv(p.read_text(encoding="utf-8"))
            for p in root.rglob("*.csv")}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def event(event_id, ts, **fields):
    return json.dumps(dict({"event_id": event_id, "user_id": "u1", "event": "purchase", "ts": ts},
                           **fields))


NORMAL = [event("a", "2026-11-20T10:05:00Z"), event("b", "2026-11-20T11:10:00Z"),
          event("c", "2026-11-20T13:15:00Z", received_at="2026-11-20T13:16:00Z")]
FAR = event("far", "9999-12-31T23:00:00Z")


@pytest.mark.parametrize("command", ["stream", "replay"])
def test_a_record_dated_9999_on_an_hourly_export_ends_with_a_handful_of_files(tmp_path, command):
    config = blob_config()
    lines = NORMAL + [FAR]
    result, out = run(tmp_path, command, config, lines)
    files = blob_files(out)
    assert files == R.reference_outputs(config, lines)["blob"]["w-blob"]
    assert len(files) == 4  # 10:00 to 13:00; the far record's window is past the limit
    # The record is not lost: it is the work's dead letter, with the reason.
    [dead] = read_jsonl(out / "deadletter" / "w-blob.jsonl")
    assert dead["raw"]["event_id"] == "far" and dead["source"] == "w-blob"
    assert dead["error"].startswith("window 9999-12-31T23:00:00Z is 69890869 windows after the "
                                    "run's first window 2026-11-20T10:00:00Z: more than "
                                    "max_windows_per_run (10000)")
    # The run says so, naming the record; the work failed, so the exit status is not 0.
    assert result.returncode == 1, result.stderr
    assert ("error: work w-blob failed: 1 record in 1 window from 9999-12-31T23:00:00Z on not "
            "written: more than max_windows_per_run (10000) windows in one run; the first is "
            "record far (received_at 9999-12-31T23:00:00Z)") in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["works"]["w-blob"]["deadlettered"] == 1
    assert summary["works"]["w-blob"]["files"] == 4 and summary["works"]["w-blob"]["rows"] == 3
    marker = json.loads((out / "blob" / "exports" / "_state" / "w-blob.json").read_text())
    assert marker["last_window_end"] == "2026-11-20T14:00:00Z"


def test_allow_more_windows_lifts_the_limit_and_max_windows_per_run_sets_it(tmp_path):
    lines = [event("a", "2026-11-20T10:05:00Z"), event("b", "2026-11-21T10:05:00Z")]
    capped = blob_config(max_windows_per_run=12)
    result, out = run(tmp_path, "replay", capped, lines, "capped")
    assert result.returncode == 1 and "more than max_windows_per_run (12)" in result.stderr
    assert blob_files(out) == R.reference_outputs(capped, lines)["blob"]["w-blob"]
    assert len(blob_files(out)) == 1
    allowed = blob_config(max_windows_per_run=12, allow_more_windows=True)
    result, out = run(tmp_path, "replay", allowed, lines, "allowed")
    assert result.returncode == 0, result.stderr
    assert blob_files(out) == R.reference_outputs(allowed, lines)["blob"]["w-blob"]
    assert len(blob_files(out)) == 25
    assert not (out / "deadletter").exists() or not os.listdir(out / "deadletter")


def test_records_out_of_time_bounds_are_dead_lettered_with_the_reason(tmp_path):
    config = blob_config()
    lines = NORMAL + [
        event("old", 946684799),                                                # 1999-12-31
        event("ahead", "2026-11-28T10:00:00Z", received_at="2026-11-20T10:00:00Z"),  # 8 days
        event("near", "2026-11-27T10:00:00Z", received_at="2026-11-20T10:30:00Z"),   # < 7 days
    ]
    result, out = run(tmp_path, "replay", config, lines)
    assert result.returncode == 0, result.stderr
    expected = R.reference_outputs(config, lines)
    dead = read_jsonl(out / "deadletter" / "input.jsonl")
    assert [d["raw"] for d in dead] == expected["deadletter"] == [lines[3], lines[4]]
    assert dead[0]["error"] == "field 'ts': 1999-12-31T23:59:59Z is before 2000-01-01T00:00:00Z"
    assert dead[1]["error"] == ("field 'ts': 2026-11-28T10:00:00Z lies more than 7d after "
                                "received_at 2026-11-20T10:00:00Z (input.max_ts_skew)")
    assert blob_files(out) == expected["blob"]["w-blob"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["records_read"], summary["deadlettered"]) == (6, 2)

    # input.max_ts_skew widens the rule: 10 days admits the record 8 days ahead.
    wider = dict(config, input={"max_ts_skew": "10d"})
    result, out = run(tmp_path, "replay", wider, lines, "wider")
    assert result.returncode == 0, result.stderr
    expected = R.reference_outputs(wider, lines)
    assert [d["raw"] for d in read_jsonl(out / "deadletter" / "input.jsonl")] == \
        expected["deadletter"] == [lines[3]]
    assert blob_files(out) == expected["blob"]["w-blob"]


def test_a_first_window_far_before_the_rest_is_a_warning_with_the_tip_to_set_start(tmp_path):
    config = blob_config(period_hours=24)
    lines = [event("stray", "2019-03-01T08:00:00Z")] + NORMAL
    result, out = run(tmp_path, "replay", config, lines)
    assert result.returncode == 0, result.stderr
    assert ("work w-blob: the first window 2019-03-01T00:00:00Z (record stray, received_at "
            "2019-03-01T08:00:00Z) lies 2821 days before the next window with data "
            "2026-11-20T00:00:00Z, so 2820 header-only files fill the gap; if records received "
            "before 2026-11-20T00:00:00Z should not be exported, set the work's start: "
            "\"2026-11-20T00:00:00Z\"") in result.stderr
    assert blob_files(out) == R.reference_outputs(config, lines)["blob"]["w-blob"]


def test_a_line_that_is_not_utf8_keeps_its_bytes_and_no_empty_dead_letter_file_is_left(tmp_path):
    config = blob_config()
    bad = b'{"event_id":"x","user_id":"caf\xe9","event":"purchase","ts":"2026-11-20T10:00:00Z"}'
    result, out = run(tmp_path, "replay", config, NORMAL + [bad])
    assert result.returncode == 0, result.stderr
    [dead] = read_jsonl(out / "deadletter" / "input.jsonl")
    assert base64.b64decode(dead["raw_b64"]) == bad
    assert "\ufffd" not in dead["raw"] and dead["raw"].startswith('{"event_id":"x","user_id":"caf\\xe9"')
    assert dead["source"].endswith(":4") and dead["error"].startswith("not UTF-8")

    # The same output directory, run again without dead letters: the earlier file is gone, and
    # no empty file is left anywhere.
    result, out = run(tmp_path, "replay", config, NORMAL)
    assert result.returncode == 0, result.stderr
    assert not (out / "deadletter" / "input.jsonl").exists()
    empty = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.stat().st_size]
    assert empty == []
