"""Identity stitching in both commands: ``pipelines.stream`` and ``pipelines.replay`` on the
DirectRunner over one random data set (identifies, anonymous-then-known users, second claims,
anonymous events after their merge, copies, shuffled lines) give the Event Hub messages and the
Blob export rows of tests/reference_identity.py; and stitching off gives today's outputs.
``stream --streaming`` (the incremental stages, transforms/identity_stream.py) writes ``replay``'s
bytes."""
import json
import os
import random
import subprocess

import pytest

from tests import reference as ref
from tests.reference_identity import reference_stitched_outputs
from tests.commands import require_flink_job_server, write_job
from tests.test_acceptance_random import PY, ROOT, read_eventhub, run_pipeline
from tests.test_identity_random import AUDIENCES, BASE, MIN

pytestmark = pytest.mark.timeout(1200)

WORKS = [
    {"id": "hub", "workflow": "eventhub_audience_export", "config": {"subscription_id": "s"}},
    {"id": "hub-fields", "workflow": "eventhub_audience_export",
     "config": {"audiences": ["buyers2", "gold"], "user_fields": ["tier"]}},
    {"id": "rows", "workflow": "azure_blob_event_export",
     "config": {"container": "exports", "prefix": "ev/", "export_type": "events",
                "period_hours": 24, "anchor": "2026-11-20T00:00:00Z",
                "attributes": ["tier", "city"], "format": "csv"}},
]


def lines_for(seed, profiles=30):
    """Random records over ``profiles`` groups of ids (each: a few anonymous ids, one user)."""
    rng = random.Random(seed)
    out, n = [], 0
    for g in range(profiles):
        users = ["k%d" % g] + (["k%d" % ((g + 1) % profiles)] if rng.random() < 0.3 else [])
        anons = ["a%d-%d" % (g, i) for i in range(rng.randint(1, 3))]
        for _ in range(rng.randint(3, 15)):
            n += 1
            ts = BASE + rng.randint(0, 240) * MIN
            rec = {"event_id": "e%d" % n}
            roll = rng.random()
            if roll < 0.2:
                rec.update(event="identify", user_id=rng.choice(users),
                           anonymous_id=rng.choice(anons))
            elif roll < 0.65:
                rec.update(event=rng.choice(["purchase", "view"]), anonymous_id=rng.choice(anons))
            else:
                rec.update(event=rng.choice(["purchase", "view", "profile"]), user_id=users[0])
            if rec["event"] == "purchase":
                rec["properties"] = {"price": rng.choice([5, 20, 50, 80])}
            if rng.random() < 0.3:
                rec["traits"] = {rng.choice(["tier", "city"]): rng.choice(
                    ["gold", "silver", "Paris", "Rome"])}
            rec["ts"] = ref.fmt_time(ts)
            rec["received_at"] = ref.fmt_time(ts + rng.randint(0, 5) * MIN)
            out.append(rec)
            if rng.random() < 0.08:
                out.append(dict(rec, received_at=ref.fmt_time(ts + 10 * MIN)))
    rng.shuffle(out)
    return [json.dumps(r) for r in out]


def _by_key(messages):
    return sorted(json.dumps(m, sort_keys=True) for m in messages)


def read_rows(out_dir):
    rows = []
    base = os.path.join(out_dir, "blob", "exports")
    for dirpath, _dirs, files in os.walk(base):
        for name in (n for n in files if n.endswith(".csv")):
            with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                parsed = ref.parse_csv(f.read())
            rows.extend(tuple(r) for r in parsed[1:])
    return sorted(rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("stitch")
    config = {"account": {"name": "acme"}, "identity": {"stitch": True}, "audiences": AUDIENCES,
              "works": WORKS}
    lines = lines_for(7)
    cfg_path, in_path = write_job(str(base / "in"), config, lines)
    return base, config, lines, cfg_path, in_path


@pytest.mark.parametrize("kind", ["stream", "replay"])
def test_both_commands_match_the_reference(data, kind):
    base, config, lines, cfg_path, in_path = data
    out = str(base / ("out-" + kind))
    run_pipeline(kind, cfg_path, in_path, out)
    expected = reference_stitched_outputs(config, lines)
    merges = [m for m in expected["eventhub"]["hub"] if "merged_into" in m["data"]]
    assert len(merges) >= 5 and expected["conflicts"], "the data set must hold merges and conflicts"
    for work in ("hub", "hub-fields"):
        assert _by_key(read_eventhub(out, work)) == _by_key(expected["eventhub"][work]), work
    want = sorted(tuple(r) for rows in expected["blob"]["rows"].values() for r in rows[1:])
    assert read_rows(out) == want
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        identity = json.load(f)["identity"]
    # one merge per anonymous id with a claim; conflicts once per (anonymous id, user, event_id)
    claimed = {json.loads(x)["anonymous_id"] for x in lines
               if "user_id" in json.loads(x) and "anonymous_id" in json.loads(x)}
    assert identity["merges"] == len(claimed)
    assert identity["conflicting_claims"] == len(expected["conflicts"])
    with open(os.path.join(out, "deadletter", "identity.jsonl"), encoding="utf-8") as f:
        dead = [json.loads(x) for x in f]
    got = sorted((json.loads(d["raw"])["anonymous_id"], json.loads(d["raw"])["user_id"],
                  json.loads(d["raw"])["event_id"]) for d in dead)
    assert got == sorted(expected["conflicts"])
    assert all(d["error"].startswith("anonymous_id '") and d["source"] == "identity" for d in dead)


def test_stream_on_prism(data):
    """The stitching graph on Prism (typed keys and Flattens: Prism knows no pickled coder)."""
    base, config, lines, cfg_path, in_path = data
    out = str(base / "out-prism")
    run_pipeline("stream", cfg_path, in_path, out, "--runner=PrismRunner")
    expected = reference_stitched_outputs(config, lines)
    assert _by_key(read_eventhub(out, "hub")) == _by_key(expected["eventhub"]["hub"])
    want = sorted(tuple(r) for rows in expected["blob"]["rows"].values() for r in rows[1:])
    assert read_rows(out) == want


def test_validate_shows_stitching(data):
    from cdp_activation.core.config import load_config
    from pipelines.validate import plan
    _base, _config, _lines, cfg_path, _in_path = data
    assert plan(load_config(cfg_path))["identity"] == {"stitch": True}


def _outputs(out_dir):
    """{relative path: bytes} of the outputs but the run-specific ones (tests/test_prism.py)."""
    from tests.test_prism import output_files
    return output_files(out_dir)[0]


def _streaming_equals_replay(data, name, *extra):
    """``stream --streaming`` with ``extra`` options writes ``replay``'s bytes."""
    _stream_equals_replay(data, name, "--streaming", *extra)


def _stream_equals_replay(data, name, *extra):
    base, config, lines, cfg_path, in_path = data
    replay = str(base / "out-replay-bytes")
    if not os.path.exists(os.path.join(replay, "summary.json")):
        run_pipeline("replay", cfg_path, in_path, replay)
    out = str(base / name)
    run_pipeline("stream", cfg_path, in_path, out, *extra)
    want, got = _outputs(replay), _outputs(out)
    assert "deadletter/identity.jsonl" in want and "eventhub/hub.jsonl" in want
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        identity = json.load(f)["identity"]
    with open(os.path.join(replay, "summary.json"), encoding="utf-8") as f:
        batch = json.load(f)["identity"]
    shared = ("merges", "conflicting_claims", "forwarded_events")
    assert {k: identity[k] for k in shared} == {k: batch[k] for k in shared}
    # Only the incremental stages cancel links; the batch form sees every claim at once.
    assert batch["cancelled_links"] == batch["cancelled_entries"] == batch["late_claims"] == 0


def test_stream_streaming_writes_what_replay_writes(data):
    """``stream --streaming`` (the incremental stages, transforms/identity_stream.py: timers fire
    as the watermark moves) against ``replay`` on the same files: every output byte for byte."""
    _streaming_equals_replay(data, "out-streaming")




@pytest.mark.flink
def test_stream_streaming_on_flink_with_as_of_writes_what_replay_writes(data):
    """The incremental stages on the embedded Flink (``--streaming``: a Flink streaming job whose
    timers fire as the watermark moves, then at the input's end) write ``replay``'s bytes. With
    ``--as_of`` given (here replay's own: the latest ``received_at``) the stages read no side
    input; without it the command refuses (next test)."""
    require_flink_job_server()
    _base, _config, lines, _cfg_path, _in_path = data
    as_of = max(json.loads(line)["received_at"] for line in lines)
    _streaming_equals_replay(data, "out-streaming-flink", "--runner=FlinkRunner",
                             "--as_of", as_of)


@pytest.mark.flink
def test_stream_on_flink_writes_what_replay_writes(data):
    """The batch form of stitching (``transforms/identity.py``: a GroupByKey per anonymous id)
    on the embedded Flink, without ``--streaming``, writes ``replay``'s bytes."""
    require_flink_job_server()
    _stream_equals_replay(data, "out-flink", "--runner=FlinkRunner")


def test_stream_streaming_on_flink_without_as_of_is_refused_before_it_runs(data, tmp_path):
    """Without ``--as_of`` the as-of time comes from the data, as a side input of the stitching
    stages, on which Beam's Flink runner fails at times (docs/RUNNERS.md): one line, exit 2,
    nothing written and no job server started."""
    _base, _config, _lines, cfg_path, in_path = data
    out = tmp_path / "out"
    cmd = [PY, "-m", "pipelines.stream", "--config", cfg_path, "--input", in_path,
           "--output_dir", str(out), "--streaming", "--runner=FlinkRunner"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "error: identity stitching with --streaming over a bounded input on Flink needs --as_of T")
    assert not out.exists()
