"""Acceptance: both pipeline commands against the independent brute-force reference.

For each seed a random data set and config (tests/datagen.py) is written to a temp dir, then
    python -m pipelines.stream --config C --input I --output_dir D1
    python -m pipelines.replay --config C --input I --output_dir D2
are run from the repo root, and every Event Hub message, every Blob export file and the dead-letter
count are compared with tests/reference.py. On a mismatch a small diff is printed.
"""

import gzip
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from tests import reference as R
from tests.commands import write_job
from tests.datagen import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
PY = VENV_PY if os.path.exists(VENV_PY) else sys.executable
PIPELINES = ["stream", "replay"]
SHOW = 5            # how many differing items a diff shows
TIMEOUT = 3600

# a pipeline run plus the reference can take longer than pytest.ini's default timeout
pytestmark = pytest.mark.timeout(3600)

CASES = [
    pytest.param(11, 150, id="seed11-150users"),
    pytest.param(23, 400, id="seed23-400users", marks=pytest.mark.slow),
]


# ------------------------------------------------------------------------------ running

def run_pipeline(kind, cfg_path, in_path, out_dir, *extra):
    cmd = [PY, "-m", "pipelines.%s" % kind, "--config", cfg_path, "--input", in_path,
           "--output_dir", out_dir] + list(extra)
    env = dict(os.environ)
    for var in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"):
        env.pop(var, None)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if proc.returncode != 0:
        pytest.fail("%s exited %d\n--- stdout (tail)\n%s\n--- stderr (tail)\n%s" % (
            " ".join(cmd), proc.returncode, proc.stdout[-3000:], proc.stderr[-6000:]))
    return proc


class Run:
    """One data set, its reference outputs and (lazily) both pipelines' output dirs."""

    def __init__(self, base, seed, n_users):
        self.base = str(base)
        self.config, self.lines = generate(seed, n_users=n_users)
        self.cfg_path, self.in_path = write_job(os.path.join(self.base, "in"), self.config,
                                                   self.lines)
        self.expected = R.reference_outputs(self.config, self.lines)
        self.outputs = {}

    def output(self, kind):
        if kind not in self.outputs:
            out = os.path.join(self.base, "out-" + kind)
            try:
                run_pipeline(kind, self.cfg_path, self.in_path, out)
                self.outputs[kind] = out
            except BaseException as exc:            # fail the other tests fast, same message
                self.outputs[kind] = exc
        if isinstance(self.outputs[kind], BaseException):
            pytest.fail("(pipeline run failed) %s" % self.outputs[kind], pytrace=False)
        return self.outputs[kind]


_RUNS = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    def get(seed, n_users):
        if (seed, n_users) not in _RUNS:
            _RUNS[(seed, n_users)] = Run(tmp_path_factory.mktemp("acc-%d" % seed), seed, n_users)
        return _RUNS[(seed, n_users)]
    return get


# ------------------------------------------------------------------------------ reading outputs

def read_eventhub(out_dir, work_id):
    path = os.path.join(out_dir, "eventhub", "%s.jsonl" % work_id)
    assert os.path.exists(path), "missing Event Hub local sink %s" % path
    msgs = []
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if text.strip():
                try:
                    msgs.append(json.loads(text))
                except ValueError as exc:
                    pytest.fail("%s line %d is not JSON: %s" % (path, n, exc))
    return msgs


def blob_name_pattern(config, work):
    wc = work["config"]
    fmt = wc.get("format", "csv")
    return re.compile("^%s%s_%s_%s_(-?\\d+)_(-?\\d+)\\.%s$" % (
        re.escape(wc.get("prefix") or ""), re.escape(config["account"]["name"]),
        re.escape(wc.get("export_type", "events")), re.escape(work["id"]), re.escape(fmt)))


def read_blob(out_dir, config, work):
    """{relative name under DIR/blob/<container>/: rows as lists of strings}"""
    root = os.path.join(out_dir, "blob", work["config"]["container"])
    pat = blob_name_pattern(config, work)
    files = {}
    if not os.path.isdir(root):
        return files
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if not pat.match(rel):
                continue
            if rel.endswith(".parquet"):
                import pyarrow.parquet as pq
                table = pq.read_table(full)
                files[rel] = [table.column_names] + [
                    ["" if v is None else str(v) for v in row.values()]
                    for row in table.to_pylist()]
                continue
            opener = gzip.open if rel.endswith(".gz") else open
            with opener(full, "rt", encoding="utf-8", newline="") as f:
                files[rel] = R.parse_csv(f.read())
    return files


def read_deadletter(out_dir):
    path = os.path.join(out_dir, "deadletter", "input.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


# ------------------------------------------------------------------------------ diffs

def _j(obj):
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def _strip_id(m):
    return {k: v for k, v in m.items() if k != "message_id"}


def _seg_summary(msgs):
    c = Counter()
    for m in msgs:
        for s in (m.get("data") or {}).get("segment_events") or []:
            c["%s/%s%s" % (s.get("slug"), s.get("event"), " (backfill)" if m.get("backfill") else "")] += 1
    return c


def diff_eventhub(expected, actual, label):
    """-> list of problem strings (empty when equal)."""
    problems = []
    exp_set = Counter(_j(_strip_id(m)) for m in expected)
    act_set = Counter(_j(_strip_id(m)) for m in actual)
    missing = exp_set - act_set
    extra = act_set - exp_set
    if missing or extra:
        problems.append("%s: %d messages expected, %d produced; %d missing, %d unexpected "
                        "(compared without message_id)" % (label, len(expected), len(actual),
                                                           sum(missing.values()),
                                                           sum(extra.values())))
        es, as_ = _seg_summary(expected), _seg_summary(actual)
        counts = ["  %-40s expected %5d  got %5d" % (k, es[k], as_[k])
                  for k in sorted(set(es) | set(as_)) if es[k] != as_[k]]
        if counts:
            problems.append("  segment events per audience that differ:\n" + "\n".join(counts[:20]))
        # show the first few differing messages, next to the same user's closest message
        by_user_act = defaultdict(list)
        for m in actual:
            by_user_act[_user(m)].append(m)
        for text in list(missing)[:SHOW]:
            m = json.loads(text)
            problems.append("  MISSING    %s" % _brief(m))
            near = [a for a in by_user_act.get(_user(m), [])
                    if a.get("timestamp") == m.get("timestamp")]
            for a in near[:1]:
                problems.append("    produced at the same T differs in: %s" % _field_diff(m, a))
        for text in list(extra)[:SHOW]:
            problems.append("  UNEXPECTED %s" % _brief(json.loads(text)))
        return problems
    # same content: message ids and per-user order
    exp_ids = {_j(_strip_id(m)): m.get("message_id") for m in expected}
    bad_ids = [(m.get("message_id"), exp_ids[_j(_strip_id(m))]) for m in actual
               if m.get("message_id") != exp_ids[_j(_strip_id(m))]]
    if bad_ids:
        problems.append("%s: %d message_id values differ from sha256(canonical JSON without "
                        "message_id)[:32], e.g. got/expected %s" % (label, len(bad_ids),
                                                                   bad_ids[:3]))
    exp_by_user, act_by_user = defaultdict(list), defaultdict(list)
    for m in expected:
        exp_by_user[_user(m)].append(_j(m))
    for m in actual:
        act_by_user[_user(m)].append(_j(m))
    out_of_order = [u for u in exp_by_user if exp_by_user[u] != act_by_user[u]]
    if out_of_order and not bad_ids:
        u = out_of_order[0]
        problems.append("%s: %d users' messages are not in time order in the sink, e.g. %s:" % (
            label, len(out_of_order), u))
        problems.append("  expected order: %s" % [json.loads(x)["timestamp"]
                                                  for x in exp_by_user[u]][:10])
        problems.append("  file order:     %s" % [json.loads(x)["timestamp"]
                                                  for x in act_by_user[u]][:10])
    return problems


def _brief(m):
    """One short line: user, T, backfill, segment events."""
    d = m.get("data") or {}
    segs = ["%s:%s(%s..%s)" % (x.get("slug"), x.get("event"), x.get("enter"), x.get("exit"))
            for x in d.get("segment_events") or []]
    return "%s=%s T=%s%s %s" % (_user(m)[0], _user(m)[1], m.get("timestamp"),
                               " backfill" if m.get("backfill") else "", " ".join(segs))


def _field_diff(exp, act, path=""):
    """Paths whose values differ, with expected/produced values (short)."""
    if isinstance(exp, dict) and isinstance(act, dict):
        out = []
        for k in sorted(set(exp) | set(act)):
            if k == "message_id":
                continue
            if k not in act:
                out.append("%s%s: expected %s, absent" % (path, k, _j(exp[k])[:80]))
            elif k not in exp:
                out.append("%s%s: unexpected %s" % (path, k, _j(act[k])[:80]))
            elif exp[k] != act[k]:
                out.append(_field_diff(exp[k], act[k], "%s%s." % (path, k)))
        return "; ".join(out)
    return "%s expected %s, produced %s" % (path.rstrip("."), _j(exp)[:120], _j(act)[:120])


def _user(m):
    d = m.get("data") or {}
    if "user_id" in d:
        return ("user_id", d["user_id"])
    return ("anonymous_id", d.get("anonymous_id"))


def diff_blob(expected, actual, label):
    problems = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        problems.append("%s: %d files expected, %d produced" % (label, len(expected), len(actual)))
        for n in missing[:SHOW]:
            problems.append("  MISSING FILE    %s (%d rows)" % (n, len(expected[n]) - 1))
        for n in extra[:SHOW]:
            problems.append("  UNEXPECTED FILE %s (%d rows)" % (n, len(actual[n]) - 1))
    shown = 0
    for name in sorted(set(expected) & set(actual)):
        e, a = expected[name], actual[name]
        if e == a:
            continue
        problems.append("%s: %s differs (%d rows expected, %d produced)" % (
            label, name, len(e) - 1, len(a) - 1))
        if e[:1] != a[:1]:
            problems.append("  header expected %s\n  header produced %s" % (e[:1], a[:1]))
        else:
            es, as_ = Counter(map(tuple, e[1:])), Counter(map(tuple, a[1:]))
            if es == as_:
                problems.append("  same rows, different order (must be by (received_at, event_id))")
            for row in list(es - as_)[:3]:
                problems.append("  MISSING ROW    %s" % list(row))
                same_id = [r for r in a[1:] if r and r[0] == row[0]]
                for r in same_id[:1]:
                    problems.append("    produced row %s" % r)
            for row in list(as_ - es)[:3]:
                problems.append("  UNEXPECTED ROW %s" % list(row))
        shown += 1
        if shown >= 3:
            problems.append("  ...")
            break
    return problems


def works_of(config, workflow):
    cfg = R.normalise_config(config)
    return [w for w in cfg["works"] if w["workflow"] == workflow]


# ------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("seed, n_users", CASES)
@pytest.mark.parametrize("kind", PIPELINES)
def test_eventhub_messages_match_reference(runs, seed, n_users, kind):
    run = runs(seed, n_users)
    out = run.output(kind)
    problems = []
    for w in works_of(run.config, "eventhub_audience_export"):
        problems += diff_eventhub(run.expected["eventhub"][w["id"]], read_eventhub(out, w["id"]),
                                  "%s %s" % (kind, w["id"]))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seed, n_users", CASES)
@pytest.mark.parametrize("kind", PIPELINES)
def test_blob_files_match_reference(runs, seed, n_users, kind):
    run = runs(seed, n_users)
    out = run.output(kind)
    problems = []
    cfg = R.normalise_config(run.config)
    for w in works_of(run.config, "azure_blob_event_export"):
        problems += diff_blob(run.expected["blob"][w["id"]], read_blob(out, cfg, w),
                              "%s %s" % (kind, w["id"]))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seed, n_users", CASES)
@pytest.mark.parametrize("kind", PIPELINES)
def test_deadletter_count_matches_reference(runs, seed, n_users, kind):
    run = runs(seed, n_users)
    got = read_deadletter(run.output(kind))
    want = run.expected["deadletter"]
    if len(got) != len(want):
        raws = {g.get("raw") if isinstance(g.get("raw"), str) else _j(g.get("raw")) for g in got}
        lost = [x for x in want if x not in raws][:SHOW]
        extra = [g for g in got if g.get("raw") not in set(want)][:SHOW]
        pytest.fail("%s: %d dead letters expected, %d written\n  expected but absent: %s\n"
                    "  written but not expected: %s" % (kind, len(want), len(got), lost, extra))
    for g in got:
        assert "raw" in g and "error" in g, "dead letter without raw/error: %s" % g


# ------------------------------------------------------------------------------ targeted

def _tiny():
    audiences = [{"id": "fb01", "slug": "frequent_buyers", "name": "Frequent buyers",
                  "condition": {"event": "purchase", "within": "7d", "min_count": 3}}]
    config = {"account": {"name": "acme", "aid": 1234}, "audiences": audiences,
              "works": [{"id": "w-eh", "workflow": "eventhub_audience_export", "config": {}}]}

    def ev(uid, ts, eid, name="purchase"):
        return json.dumps({"event_id": eid, "user_id": uid, "event": name, "ts": ts})
    lines = [
        # u1: 3 purchases, then nothing: exits when the oldest leaves the 7-day window
        ev("u1", "2026-11-01T10:00:00.250Z", "a1"),
        ev("u1", "2026-11-02T09:00:00Z", "a2"),
        ev("u1", "2026-11-03T08:00:00Z", "a3"),
        # u2: keeps the data going long after u1's exit
        ev("u2", "2026-11-01T00:00:00Z", "b1", "login"),
        ev("u2", "2026-11-20T00:00:00Z", "b2", "login"),
        # u3: 3 purchases at the very end of the data: the exit is after the data's span, so
        # after the run's default as-of time (the latest received_at)
        ev("u3", 1795132800.5, "c1"),                   # 2026-11-20T00:00:00.500Z
        ev("u3", 1795140000000, "c2"),                  # 2026-11-20T02:00:00Z (epoch ms)
        ev("u3", "2026-11-20T05:00:00+02:00", "c3"),    # 2026-11-20T03:00:00Z
    ]
    lines = [lines[i] for i in (5, 2, 0, 4, 7, 1, 3, 6)]     # arrival order shuffled
    return config, lines


@pytest.mark.parametrize("kind", PIPELINES)
def test_exit_from_window_expiry_alone_carries_ts_plus_within(tmp_path, kind):
    config, lines = _tiny()
    cfg_path, in_path = write_job(str(tmp_path / "in"), config, lines)
    out = str(tmp_path / "out")
    as_of = "2026-11-27T00:00:00.500Z"  # exactly u3's exit: a transition at the as-of is sent
    run_pipeline(kind, cfg_path, in_path, out, "--as_of", as_of)
    msgs = read_eventhub(out, "w-eh")

    def seg(uid, event):
        return [(m["timestamp"], s["enter"], s["exit"]) for m in msgs
                if m["data"].get("user_id") == uid
                for s in m["data"]["segment_events"] if s["event"] == event]
    assert seg("u1", "enter") == [("2026-11-03T08:00:00Z", "2026-11-03T08:00:00Z",
                                   "2099-12-31T23:59:59Z")]
    # 2026-11-01T10:00:00.250Z + 7d, exactly; no event of u1 happens then
    assert seg("u1", "exit") == [("2026-11-08T10:00:00.250Z", "2026-11-03T08:00:00Z",
                                  "2026-11-08T10:00:00.250Z")]
    assert seg("u3", "exit") == [("2026-11-27T00:00:00.500Z", "2026-11-20T03:00:00Z",
                                  "2026-11-27T00:00:00.500Z")]
    u1_exit = [m for m in msgs if m["data"].get("user_id") == "u1"
               and m["data"]["segment_events"][0]["event"] == "exit"][0]
    assert u1_exit["data"]["_modified"] == "2026-11-03T08:00:00Z"
    assert u1_exit["data"]["_created"] == "2026-11-01T10:00:00.250Z"
    problems = diff_eventhub(R.reference_outputs(config, lines, as_of=R.parse_time(as_of))
                             ["eventhub"]["w-eh"], msgs, kind)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", PIPELINES)
def test_default_as_of_sends_nothing_after_the_latest_received_at(tmp_path, kind):
    config, lines = _tiny()
    cfg_path, in_path = write_job(str(tmp_path / "in"), config, lines)
    out = str(tmp_path / "out")
    proc = run_pipeline(kind, cfg_path, in_path, out)
    msgs = read_eventhub(out, "w-eh")
    assert max(m["timestamp"] for m in msgs) == "2026-11-20T03:00:00Z"  # u3's enter
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    # The latest received_at (no record gives one: its ts) is u3's third purchase.
    assert summary["as_of"] == "2026-11-20T03:00:00Z"
    assert summary["pending_wakeups"] == 1  # u3's exit, 7 days later
    assert "pending wake-ups 1" in proc.stdout
    problems = diff_eventhub(R.reference_outputs(config, lines)["eventhub"]["w-eh"], msgs, kind)
    assert not problems, "\n".join(problems)


def test_tiny_reference_itself():
    config, lines = _tiny()
    msgs = R.reference_outputs(config, lines, as_of=R.parse_time("2026-12-31T00:00:00Z"))
    expected = [("u1", "2026-11-03T08:00:00Z", "enter"), ("u1", "2026-11-08T10:00:00.250Z", "exit"),
                ("u3", "2026-11-20T03:00:00Z", "enter"), ("u3", "2026-11-27T00:00:00.500Z", "exit")]
    assert [(m["data"]["user_id"], m["timestamp"], m["data"]["segment_events"][0]["event"])
            for m in msgs["eventhub"]["w-eh"]] == expected
    by_default = R.reference_outputs(config, lines)["eventhub"]["w-eh"]
    assert [(m["data"]["user_id"], m["timestamp"], m["data"]["segment_events"][0]["event"])
            for m in by_default] == expected[:3]
