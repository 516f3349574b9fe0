"""``--state`` and the as-of time through the commands (docs/STATE.md).

Two runs over day 1 then day 2, each with the same ``--state``, give exactly the audience
messages, Blob files and alerts of one run over both days; a corrupt or incompatible snapshot is
refused with one line before any data moves; a bounded run sends nothing dated after its as-of.
"""
import collections
import datetime
import glob
import json
import os
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
US = 1_000_000
HOUR = 3600 * US
DAY = 24 * HOUR
T0 = 1795132800 * US                  # 2026-11-20T00:00:00Z
SPLIT = T0 + DAY                      # day 2 starts here

CONFIG = {
    "account": {"name": "acme", "aid": 1234},
    "audiences": [
        {"id": "a-buyers", "slug": "buyers", "condition": {"event": "purchase", "within": "6h",
                                                            "min_count": 2}},
        {"id": "a-gold", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}},
        {"id": "a-quiet", "slug": "quiet",
         "condition": {"event": "view", "within": "12h", "min_count": 0, "max_count": 0}},
        {"id": "a-vip", "slug": "vip",
         "condition": {"and": [{"audience": "buyers"}, {"audience": "gold"}]}},
    ],
    "works": [
        {"id": "w-eh", "workflow": "eventhub_audience_export",
         "config": {"user_fields": ["tier"]}},
        {"id": "w-alerts", "workflow": "webhook_system_events",
         "config": {"system_event_sources": {"campaign": []}}},
        {"id": "w-blob", "workflow": "azure_blob_event_export",
         "config": {"container": "exports", "period_hours": 1, "format": "csv",
                    "event_parameters": ["price"], "attributes": ["tier"]}},
        {"id": "w-sys", "workflow": "azure_blob_event_export",
         "config": {"container": "exports", "prefix": "sys/", "export_type": "system_events",
                    "period_hours": 6, "format": "csv"}},
    ],
}


def _rfc(us):
    t = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _two_days(seed=20):
    """(day-1 lines, day-2 lines), each in arrival order. No record's ts or received_at lies
    within 15 minutes of the split, so the day files are also the ts halves and the Blob windows
    of each day hold that day's records only."""
    rnd = random.Random(seed)
    records = []

    def some_time():
        while True:
            t = T0 + rnd.randrange(0, 2 * DAY)
            if abs(t - SPLIT) > 15 * 60 * US and t < T0 + 2 * DAY - 60 * US:
                return t

    n = 0
    for u in range(14):
        for _ in range(rnd.randint(4, 12)):
            n += 1
            ts = some_time()
            name = rnd.choice(["purchase", "purchase", "view", "profile"])
            obj = {"event_id": "e%d" % n, "user_id": "u%d" % u, "event": name, "ts": _rfc(ts),
                   "received_at": _rfc(ts + rnd.randrange(0, 60 * US))}
            if name == "purchase":
                obj["properties"] = {"price": rnd.choice([5, 20, 80])}
            if rnd.random() < 0.3:
                obj["traits"] = {"tier": rnd.choice(["gold", "silver", None])}
            records.append(obj)
            if rnd.random() < 0.15:  # a copy sent again hours later (into day 2 for some)
                copy = dict(obj, received_at=_rfc(ts + rnd.randrange(1, 20) * HOUR))
                records.append(copy)
    for i in range(8):
        ts = some_time()
        obj = {"kind": "system", "id": "se-%d" % i, "ts": _rfc(ts), "received_at": _rfc(ts + US),
               "data": {"aid": 1234, "subject_type": "campaign", "subject_id": "c%d" % i,
                        "verb": rnd.choice(["failed", "updated"]), "notes": "n%d" % i}}
        records.append(obj)
        if i % 2 == 0:
            records.append(dict(obj, received_at=_rfc(ts + rnd.randrange(2, 12) * HOUR)))
    records.sort(key=lambda o: o["received_at"])
    days = ([], [])
    for obj in records:
        received = obj["received_at"]
        days[received >= _rfc(SPLIT)].append(json.dumps(obj))
    assert all(json.loads(line)["ts"] < _rfc(SPLIT) for line in days[0])
    # Copies of day-1 records that arrive in day 2 keep their day-1 ts; every other day-2 record
    # is dated after the split.
    return days


def _run(kind, config, inputs, out, *extra, check=True):
    cmd = [sys.executable, "-m", "pipelines.%s" % kind, "--config", config, "--input", inputs,
           "--output_dir", out] + list(extra)
    env = {k: v for k, v in os.environ.items()
           if k not in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING")}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
        pytest.fail("%s exited %d\n%s\n%s" % (" ".join(cmd), proc.returncode, proc.stdout[-2000:],
                                              proc.stderr[-4000:]))
    return proc


def _lines(path):
    with open(path, encoding="utf-8") as fh:
        return [line for line in fh.read().splitlines() if line.strip()]


def _outputs(out):
    """What one run sent: messages and alerts (lines), and the summary."""
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    return (_lines(os.path.join(out, "eventhub", "w-eh.jsonl")),
            _lines(os.path.join(out, "alerts", "w-alerts.jsonl")), summary)


def _blob_files(out):
    root = os.path.join(out, "blob", "exports")
    files = {}
    for path in glob.glob(os.path.join(root, "**", "*.csv"), recursive=True):
        with open(path, encoding="utf-8") as fh:
            files[os.path.relpath(path, root)] = fh.read()
    return files


def _per_user(lines):
    users = collections.defaultdict(list)
    for line in lines:
        users[json.loads(line)["data"]["user_id"]].append(line)
    return dict(users)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    base = tmp_path_factory.mktemp("days")
    day1, day2 = _two_days()
    paths = {}
    for name, lines in (("day1", day1), ("day2", day2), ("both", day1 + day2)):
        paths[name] = str(base / ("%s.jsonl" % name))
        with open(paths[name], "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    paths["config"] = str(base / "config.yaml")
    with open(paths["config"], "w", encoding="utf-8") as fh:
        yaml.safe_dump(CONFIG, fh)
    return paths


@pytest.mark.parametrize("kind", ["stream", "replay"])
def test_two_daily_runs_with_state_give_the_outputs_of_one_run(days, tmp_path, kind):
    one = str(tmp_path / "one")
    _run(kind, days["config"], days["both"], one)
    one_messages, one_alerts, one_summary = _outputs(one)

    state = str(tmp_path / "state" / "audiences.parquet")
    daily = str(tmp_path / "daily")
    if kind == "stream":  # one file per day of arrival; as-of: the latest received_at of each
        first = _run(kind, days["config"], days["day1"], daily, "--state", state)
    else:  # one archive, a day per run; as-of: --end
        first = _run(kind, days["config"], days["both"], daily, "--state", state,
                     "--end", _rfc(SPLIT))
    messages1, alerts1, summary1 = _outputs(daily)
    assert os.path.exists(state) and not glob.glob(state + ".tmp-*")
    if kind == "stream":
        second = _run(kind, days["config"], days["day2"], daily, "--state", state)
    else:
        second = _run(kind, days["config"], days["both"], daily, "--state", state,
                      "--start", _rfc(SPLIT))
    messages2, alerts2, summary2 = _outputs(daily)

    # Wake-ups after day 1's as-of are carried over: exits the first run could not send yet.
    assert summary1["pending_wakeups"] > 0
    assert "pending wake-ups" in first.stdout and "pending wake-ups" in second.stdout
    assert max(json.loads(m)["timestamp"] for m in messages1) <= summary1["as_of"] < _rfc(SPLIT)
    assert min(json.loads(m)["timestamp"] for m in messages2) > summary1["as_of"]
    assert summary2["as_of"] == one_summary["as_of"]

    assert len(one_messages) > 30
    assert sorted(messages1 + messages2) == sorted(one_messages)
    assert _per_user(messages1 + messages2) == _per_user(one_messages)  # each user in time order
    assert len(one_alerts) >= 8 and sorted(alerts1 + alerts2) == sorted(one_alerts)
    assert _blob_files(daily) == _blob_files(one)
    assert len(_blob_files(one)) > 20
    # Copies sent again across the split were remembered: none applied twice.
    assert summary1["duplicates"] + summary2["duplicates"] == one_summary["duplicates"]
    assert summary1["duplicates"] < one_summary["duplicates"]


def test_the_snapshot_is_parquet_one_row_per_user_and_versioned(days, tmp_path):
    state = str(tmp_path / "s.parquet")
    _run("replay", days["config"], days["day1"], str(tmp_path / "out"), "--state", state)
    table = pq.read_table(state)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["format"] == "activation-audience-state" and meta["version"] == "1"
    assert meta["account"] == "acme" and int(meta["as_of"]) < SPLIT
    rows = table.to_pylist()
    users = [r for r in rows if r["kind"] == "user"]
    assert len(users) == len({r["key"] for r in users}) == 14
    # The 24 h dedupe memory: every system event of day 1 (none is 24 h older than the as-of).
    day1_ids = {json.loads(line)["id"] for line in _lines(days["day1"])
                if json.loads(line).get("kind") == "system"}
    assert day1_ids and {r["key"] for r in rows if r["kind"] == "system_event"} == day1_ids
    member_ids = set()
    for r in users:
        member_ids.update(json.loads(r["members"]))
        assert set(json.loads(r["audiences"])) == {"a-buyers", "a-gold", "a-quiet", "a-vip"}
    assert member_ids <= {"a-buyers", "a-gold", "a-quiet", "a-vip"} and member_ids


def _write_table(path, metadata, rows=()):
    from cdp_activation.core.snapshot import SCHEMA
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA).replace_schema_metadata(metadata)
    pq.write_table(table, path)


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a Parquet file"),
    ("truncated", "not a Parquet file"),
    ("version", "snapshot version 2, this code reads version 1"),
    ("account", "a snapshot of account 'other'"),
    ("row", "row 0:"),
])
def test_corrupt_or_incompatible_snapshot_is_refused_before_any_data_moves(days, tmp_path, case,
                                                                          message):
    state = str(tmp_path / "s.parquet")
    good = {"format": "activation-audience-state", "version": "1", "account": "acme", "as_of": ""}
    if case == "garbage":
        with open(state, "wb") as fh:
            fh.write(b"not parquet at all")
    elif case == "truncated":
        _run("replay", days["config"], days["day1"], str(tmp_path / "first"), "--state", state)
        with open(state, "rb") as fh:
            data = fh.read()
        with open(state, "wb") as fh:
            fh.write(data[:len(data) // 2])
    elif case == "version":
        _write_table(state, dict(good, version="2"))
    elif case == "account":
        _write_table(state, dict(good, account="other"))
    else:
        _write_table(state, good, [{"kind": "user", "key_field": "user_id", "key": "u1",
                                    "state_version": 1, "clock": 0, "max_received": 0,
                                    "traits": "{}", "members": "{}", "audiences": "{}",
                                    "counts": "{\"x\": \"nine\"}", "seen": "{}"}])
    before = open(state, "rb").read()
    out = str(tmp_path / "out")
    proc = _run("replay", days["config"], days["day1"], out, "--state", state, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --state %s: " % state), proc.stderr
    assert message in lines[0]
    assert not os.path.exists(out)           # nothing moved
    assert open(state, "rb").read() == before  # and the snapshot is left as it was


def test_state_and_as_of_are_refused_where_they_do_not_apply(days, tmp_path):
    proc = _run("stream", days["config"], days["day1"], str(tmp_path / "o"), "--state",
                str(tmp_path / "s.parquet"), "--streaming", check=False)
    assert proc.returncode == 2 and "--state needs batch execution" in proc.stderr
    proc = _run("replay", days["config"], days["day1"], str(tmp_path / "o"), "--as_of", "nope",
                check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --as_of:")
    state = str(tmp_path / "s2.parquet")
    _run("replay", days["config"], days["day1"], str(tmp_path / "o1"), "--state", state)
    proc = _run("replay", days["config"], days["day1"], str(tmp_path / "o2"), "--state", state,
                "--as_of", _rfc(T0), check=False)
    assert proc.returncode == 2 and "after this run's as-of" in proc.stderr
