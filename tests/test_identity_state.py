"""Identity stitching with ``--state`` (docs/STATE.md, docs/decisions/0004): random histories over
three days, split into consecutive runs with the same ``--state``, give the Event Hub messages,
Blob rows and conflicting claims of one run over all of it and of tests/reference_identity.py, in
both commands.

The data has what the split must carry: anonymous ids merged on one day with events on later
days (forwarded through the saved link), anonymous ids with a saved history claimed on a later
day (their saved state merges), claims by another user of an id merged on an earlier day
(conflicts against the saved link), identifies before any anonymous event, windows and a
computed trait reaching across the split, and copies of records sent again on the next day.
"""
import datetime
import json
import os
import random

import pyarrow.parquet as pq
import pytest

from tests import reference as ref
from tests.commands import write_job
from tests.reference_identity import reference_stitched_outputs, resolve
from tests.test_acceptance_random import read_eventhub
from tests.test_identity_pipelines import _by_key, read_rows
from tests.test_identity_random import AUDIENCES
from tests.test_state_runs import _run

pytestmark = pytest.mark.timeout(1800)

US = 1_000_000
MIN = 60 * US
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = ref.parse_time("2026-11-20T00:00:00Z")
DAYS = 3
SPLITS = [T0 + d * DAY for d in range(1, DAYS)]

CONFIG = {
    "account": {"name": "acme"},
    "identity": {"stitch": True},
    "computed_traits": {"spend_2d": {"op": "sum", "event": "purchase", "property": "price",
                                     "within": "2d"}},
    "audiences": AUDIENCES + [
        {"id": "a8", "slug": "buyers_1d", "condition": {"event": "purchase", "within": "1d",
                                                         "min_count": 2}},
        {"id": "a9", "slug": "spender_2d", "condition": {"computed": "spend_2d", "op": "gte",
                                                          "value": 100}},
    ],
    "works": [
        {"id": "hub", "workflow": "eventhub_audience_export", "config": {"subscription_id": "s"}},
        {"id": "hub-fields", "workflow": "eventhub_audience_export",
         "config": {"audiences": ["buyers_1d", "gold", "spender_2d"], "user_fields": ["tier"],
                    "computed_fields": ["spend_2d"]}},
        {"id": "rows", "workflow": "azure_blob_event_export",
         "config": {"container": "exports", "prefix": "ev/", "export_type": "events",
                    "period_hours": 1, "anchor": "2026-11-20T00:00:00Z",
                    "attributes": ["tier", "city"], "format": "csv"}},
    ],
}


def _rfc(us):
    t = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def random_days(seed, profiles=30):
    """Lines over DAYS days, in arrival order: per group of ids (a user, sometimes a second one
    that claims too, one to three anonymous ids) browsing, identifies and the user's own events.
    No record's ts or received_at lies within 15 minutes of a day's end, so each day file is
    also a ts slice; copies are sent again 1 to 20 hours later (into the next day for some)."""
    rng = random.Random(seed)
    records, n = [], 0

    def some_time():
        while True:
            t = T0 + rng.randrange(0, DAYS * DAY - 30 * MIN)
            if all(abs(t - s) > 15 * MIN for s in SPLITS):
                return t

    for g in range(profiles):
        users = ["k%d" % g] + (["k%d" % ((g + 1) % profiles)] if rng.random() < 0.3 else [])
        anons = ["a%d-%d" % (g, i) for i in range(rng.randint(1, 3))]
        for _ in range(rng.randint(8, 30)):
            n += 1
            ts = some_time()
            rec = {"event_id": "e%d" % n}
            roll = rng.random()
            if roll < 0.15:
                rec.update(event="identify", user_id=rng.choice(users),
                           anonymous_id=rng.choice(anons))
            elif roll < 0.65:
                rec.update(event=rng.choice(["purchase", "view", "view"]),
                           anonymous_id=rng.choice(anons))
            else:
                rec.update(event=rng.choice(["purchase", "view", "profile"]), user_id=users[0])
            if rec["event"] == "purchase":
                rec["properties"] = {"price": rng.choice([5, 20, 50, 80])}
            if rng.random() < 0.3:
                rec["traits"] = {rng.choice(["tier", "city"]): rng.choice(
                    ["gold", "silver", "Paris", "Rome"])}
            rec["ts"] = _rfc(ts)
            received = ts + rng.randint(0, 5) * MIN
            rec["received_at"] = _rfc(received)
            records.append((received, rec))
            if rng.random() < 0.08:
                again = received + rng.randint(1, 20) * HOUR
                if all(abs(again - s) > 15 * MIN for s in SPLITS):
                    records.append((again, dict(rec, received_at=_rfc(again))))
    records.sort(key=lambda r: (r[0], r[1]["event_id"]))
    days = [[] for _ in range(DAYS)]
    for received, rec in records:
        days[sum(received >= s for s in SPLITS)].append(json.dumps(rec))
    return days


def carried_cases(days):
    """Counts of what the split must carry (see the module docstring), from the reference's
    claim resolution over all days."""
    lines = [x for day in days for x in day]
    events, _systems, _dead = ref.parse_lines(lines)
    links, conflicts = resolve(events)

    def day_of(t):
        return sum(t >= s for s in SPLITS)

    forwarded = sum(1 for e in events if not e.user_id and e.anonymous_id in links
                    and day_of(e.ts) > day_of(links[e.anonymous_id][0]))
    saved_then_claimed = len({e.anonymous_id for e in events if not e.user_id
                              and e.anonymous_id in links
                              and day_of(e.ts) < day_of(links[e.anonymous_id][0])})
    later_conflicts = 0
    by_id = {e.event_id: e for e in events}
    for anon, _user, event_id in conflicts:
        if day_of(by_id[event_id].ts) > day_of(links[anon][0]):
            later_conflicts += 1
    return forwarded, saved_then_claimed, later_conflicts


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("stitch-state")
    days = random_days(31)
    paths = {}
    for i, lines in enumerate(days):
        paths[i] = str(base / ("day%d.jsonl" % (i + 1)))
        with open(paths[i], "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    lines = [x for day in days for x in day]
    cfg_path, in_path = write_job(str(base / "in"), CONFIG, lines)
    return base, days, paths, lines, cfg_path, in_path


def test_the_days_hold_what_the_split_must_carry(data):
    _base, days, _paths, _lines, _cfg, _in = data
    forwarded, saved_then_claimed, later_conflicts = carried_cases(days)
    assert forwarded >= 10 and saved_then_claimed >= 5 and later_conflicts >= 3


def _identity_dead(out):
    path = os.path.join(out, "deadletter", "identity.jsonl")
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as fh:
        raws = [json.loads(json.loads(x)["raw"]) for x in fh if x.strip()]
    return {(r["anonymous_id"], r["user_id"], r["event_id"]) for r in raws}


def _outputs(out):
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    return ({w: read_eventhub(out, w) for w in ("hub", "hub-fields")}, _identity_dead(out),
            summary)


@pytest.mark.parametrize("runs", [[[0], [1], [2]]], ids=["3-runs"])
@pytest.mark.parametrize("kind", ["stream", "replay"])
def test_runs_with_state_give_one_run_and_the_reference(data, tmp_path, kind, runs):
    _base, days, _paths, lines, cfg_path, in_path = data
    one = str(tmp_path / "one")
    _run(kind, cfg_path, in_path, one)
    one_hubs, one_dead, one_summary = _outputs(one)

    state = str(tmp_path / "state" / "audiences.parquet")
    daily = str(tmp_path / "daily")
    hubs = {"hub": [], "hub-fields": []}
    dead, merges = set(), 0
    bounds = [None] + [_rfc(s) for s in SPLITS] + [None]
    for group in runs:
        if kind == "stream":  # one file per run, the days of arrival it covers
            path = str(tmp_path / ("days%s.jsonl" % "".join(map(str, group))))
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(x for d in group for x in days[d]) + "\n")
            _run(kind, cfg_path, path, daily, "--state", state)
        else:                 # one archive, the run's days by --start and --end
            extra = [] if bounds[group[0]] is None else ["--start", bounds[group[0]]]
            extra += [] if bounds[group[-1] + 1] is None else ["--end", bounds[group[-1] + 1]]
            _run(kind, cfg_path, in_path, daily, "--state", state, *extra)
        day_hubs, day_dead, summary = _outputs(daily)
        for work, messages in day_hubs.items():
            hubs[work] += messages
        dead |= day_dead
        merges += summary["identity"]["merges"]
    assert summary["as_of"] == one_summary["as_of"]

    expected = reference_stitched_outputs(CONFIG, lines)
    for work in ("hub", "hub-fields"):
        assert _by_key(one_hubs[work]) == _by_key(expected["eventhub"][work]), work
        assert _by_key(hubs[work]) == _by_key(one_hubs[work]), work
    assert sum("merged_into" in m["data"] for m in hubs["hub"]) >= 5
    want = sorted(tuple(r) for rows in expected["blob"]["rows"].values() for r in rows[1:])
    assert read_rows(one) == want
    assert read_rows(daily) == want
    assert one_dead == dead == set(expected["conflicts"]) and dead
    assert merges == one_summary["identity"]["merges"] > 0

    # The saved links: each anonymous id merged so far, with its user and merge time.
    rows = pq.read_table(state).to_pylist()
    links = {r["key"]: (r["merged_into"], r["merged_at"]) for r in rows
             if r["kind"] == "user" and r["merged_into"] is not None}
    events, _systems, _dead = ref.parse_lines(lines)
    want_links = {anon: (user, at) for anon, (at, user) in resolve(events)[0].items()}
    assert links == want_links
    assert all(r["key_field"] == "anonymous_id" for r in rows if r["key"] in links)


def test_the_link_is_saved_in_the_state_bytes_and_the_snapshot_and_is_additive():
    import io

    from cdp_activation.core.conditions import AudienceSet
    from cdp_activation.core.engine import Engine
    from cdp_activation.core.identity import Link, dump_profile, load_profile
    from cdp_activation.core.records import parse_record
    from cdp_activation.core.snapshot import read_snapshot, user_row, write_snapshot
    from cdp_activation.core.state import decode_document

    engine = Engine(AudienceSet(AUDIENCES))
    state = engine.new_state()
    engine.advance(state, [parse_record(json.dumps(
        {"event_id": "e1", "anonymous_id": "a1", "event": "view", "ts": _rfc(T0)}))], T0 + HOUR)
    plain = dump_profile(engine, state)
    assert plain == engine.dump_state(state)       # no link: the bytes it always had
    linked = dump_profile(engine, state, Link("k1", T0 + MIN))
    assert linked != plain and linked.startswith(plain[:2])
    assert load_profile(engine, plain)[1] is None
    restored, link = load_profile(engine, linked)
    assert link == ("k1", T0 + MIN) and engine.dump_state(restored) == plain

    buffer = io.BytesIO()
    write_snapshot(buffer, [user_row("anonymous_id", "a1", decode_document(linked)),
                            user_row("anonymous_id", "a2", decode_document(plain))], "acme", T0)
    users = read_snapshot(buffer.getvalue()).users
    assert [(k, d.get("merged_into"), d.get("merged_at")) for k, d, _ in users] == [
        (("anonymous_id", "a1"), "k1", T0 + MIN), (("anonymous_id", "a2"), None, None)]
    # A snapshot written before the link existed (no such columns) reads with no link.
    table = pq.read_table(io.BytesIO(buffer.getvalue()))
    old = table.drop_columns(["merged_into", "merged_at"])
    old_buffer = io.BytesIO()
    pq.write_table(old.replace_schema_metadata(table.schema.metadata), old_buffer)
    assert [d.get("merged_into") for _, d, _ in read_snapshot(old_buffer.getvalue()).users] == [
        None, None]


def test_replay_runs_with_state_on_the_acceptance_data_give_one_run_and_the_reference(tmp_path):
    """tests/datagen's data (every node kind, computed traits, a backfill, copies, users with both
    ids, anonymous users) with stitching on, replayed in three ``ts`` slices with ``--state``.
    Replay only: the slices are cut by ``ts`` (``--start``/``--end``), and this data's records
    arrive up to hours late, so day files of arrival would not be slices dated after each other."""
    from tests.datagen import BASE as DG_BASE, DAY as DG_DAY, _rfc as dg_rfc, generate

    config, lines = generate(5, n_users=60, days=30)
    config["identity"] = {"stitch": True}
    cfg_path, in_path = write_job(str(tmp_path / "in"), config, lines)
    works = [w["id"] for w in config["works"] if w["workflow"] == "eventhub_audience_export"]
    one = str(tmp_path / "one")
    _run("replay", cfg_path, in_path, one)
    state, daily = str(tmp_path / "state.parquet"), str(tmp_path / "daily")
    splits = [dg_rfc(DG_BASE + 10 * DG_DAY), dg_rfc(DG_BASE + 20 * DG_DAY)]
    got, merges = {w: [] for w in works}, 0
    for extra in (["--end", splits[0]], ["--start", splits[0], "--end", splits[1]],
                  ["--start", splits[1]]):
        _run("replay", cfg_path, in_path, daily, "--state", state, *extra)
        for work in works:
            got[work] += read_eventhub(daily, work)
        with open(os.path.join(daily, "summary.json"), encoding="utf-8") as fh:
            merges += json.load(fh)["identity"]["merges"]
    expected = reference_stitched_outputs(config, lines)
    for work in works:
        assert len(expected["eventhub"][work]) > 100
        assert _by_key(read_eventhub(one, work)) == _by_key(expected["eventhub"][work]), work
        assert _by_key(got[work]) == _by_key(expected["eventhub"][work]), work
    with open(os.path.join(one, "summary.json"), encoding="utf-8") as fh:
        assert merges == json.load(fh)["identity"]["merges"] > 0
