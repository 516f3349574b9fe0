"""Flink, live, with identity stitching: the incremental stages (transforms/identity_stream.py) on
a live read send what a DirectRunner run over the same lines sends.

Random records of anonymous ids and their users (identifies, anonymous events before and after
their merge, events of known users, second claims of an anonymous id by another user) are dated
from now, a millisecond apart in their order, and published to the input hub of the project's
local Event Hubs endpoint. Then:

1. the reference: ``pipelines.stream`` over the same lines as a file on the DirectRunner (the
   batch form of stitching), into one output hub;
2. the live job: ``pipelines.stream --streaming --runner=FlinkRunner`` reading the hub live
   (``mode=live``, so no as-of side input) on embedded Flink, into another output hub, until every
   reference message and identity dead letter has arrived (counted, never timed; the test's
   timeout bounds the wait), then stopped with Ctrl-C.

Then: the live job sent exactly the reference's messages (ids and bytes, a repeat the same bytes),
among them merges, and dead-lettered exactly the reference's conflicting claims. The audiences
have no time window, so no timer of the evaluator is due while the job runs; the stitching stages'
own timers (a link becomes final once the watermark passes its merge) are.
"""
import json
import subprocess
import time

import pytest

from emulators.eventhubs import LocalEventHubs
from tests.commands import require_flink_job_server, write_job
from tests.test_flink_live import (PARTITIONS, PY, ROOT, _dead_letters, _job_env, _live_command,
                                   _messages, _publish, _rfc, _stop, _wait)
from tests.test_identity_pipelines import lines_for

pytestmark = [pytest.mark.flink, pytest.mark.slow]

SEED = 11
AUDIENCES = [
    {"id": "a-buyers", "slug": "buyers", "condition": {"event": "purchase"}},
    {"id": "a-gold", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}},
    {"id": "a-big", "slug": "big_spender",
     "condition": {"event": "purchase", "where": {"property": "price", "op": "gte", "value": 50}}},
    {"id": "a-gold-buyers", "slug": "gold_buyers",
     "condition": {"and": [{"audience": "gold"}, {"audience": "buyers"}]}},
    {"id": "a-paris", "slug": "parisian",
     "condition": {"trait": "city", "op": "eq", "value": "Paris"}},
]
CONFIG = {"account": {"name": "acme"}, "identity": {"stitch": True}, "audiences": AUDIENCES,
          "works": [{"id": "w-eh", "workflow": "eventhub_audience_export",
                     "config": {"connection_string": "${OUT_CS}"}}]}


def _live_lines(start):
    """``[(partition key, JSON line)]``: tests/test_identity_pipelines.py's random records without
    their copies, in the order of their ``ts``, re-dated from ``start`` a millisecond apart (so
    every partition is in time order and nothing falls behind the watermark)."""
    records, seen = [], set()
    for line in lines_for(SEED):
        record = json.loads(line)
        if record["event_id"] not in seen:
            seen.add(record["event_id"])
            records.append(record)
    records.sort(key=lambda r: (r["ts"], r["event_id"]))
    out = []
    for n, record in enumerate(records):
        record.pop("received_at", None)
        record["ts"] = _rfc(start + n / 1000.0)
        out.append((record.get("user_id") or record["anonymous_id"],
                    json.dumps(record, sort_keys=True)))
    return out


@pytest.mark.timeout(600)
def test_live_stitching_on_flink_sends_what_the_direct_runner_sends(tmp_path):
    require_flink_job_server()
    lines = _live_lines(time.time() - 1)
    config_path, input_path = write_job(str(tmp_path / "in"), CONFIG, [x for _, x in lines])
    with LocalEventHubs(hub="in", partitions=PARTITIONS) as source, \
            LocalEventHubs(hub="out", partitions=PARTITIONS) as reference_hub, \
            LocalEventHubs(hub="out", partitions=PARTITIONS) as live_hub:
        reference_out = str(tmp_path / "reference")
        run = subprocess.run(
            [PY, "-m", "pipelines.stream", "--config", config_path, "--input", input_path,
             "--runner=DirectRunner", "--output_dir", reference_out, "--progress_seconds", "0"],
            cwd=ROOT, env=_job_env(source, reference_hub), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-4000:]
        expected = {k: v[0] for k, v in _messages(reference_hub).items()}
        expected_dead = sorted(_dead_letters(reference_out, "identity"))
        merges = [b for b in expected.values() if "merged_into" in json.loads(b)["data"]]
        assert len(merges) >= 5 and expected_dead, "the data must hold merges and conflicts"

        _publish(source.connection_string, lines)
        out, log_path = str(tmp_path / "flink"), tmp_path / "flink.log"
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(_live_command(config_path, out, tmp_path / "checkpoints"),
                                    cwd=ROOT, env=_job_env(source, live_hub), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait("the reference's messages and dead letters",
                  lambda: set(expected) <= set(_messages(live_hub))
                  and len(_dead_letters(out, "identity")) >= len(expected_dead), proc, log_path)
        finally:
            _stop(proc)
        received = _messages(live_hub)
    print("\nFLINK_LIVE_STITCHING %s" % json.dumps({
        "lines": len(lines), "messages": len(expected), "merges": len(merges),
        "conflicts": len(expected_dead), "received": sum(len(v) for v in received.values())}))
    assert set(received) == set(expected), "missing %d, extra %d" % (
        len(set(expected) - set(received)), len(set(received) - set(expected)))
    for message_id, copies in received.items():
        assert all(copy == expected[message_id] for copy in copies), message_id
    assert sorted(_dead_letters(out, "identity")) == expected_dead
