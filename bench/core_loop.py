"""The pure core in a plain Python loop (no Beam): parse, group by user, evaluate.

``python -m bench._measure bench.core_loop --config C --input F`` prints, before the measure line,
``{"parse_seconds", "engine_seconds", "events", "state_bytes_median", "state_bytes_max", "changes"}``.
"""
import argparse
import json
import statistics
import time

from cdp_activation.core.config import load_config
from cdp_activation.core.engine import Engine
from cdp_activation.core.identity import stitch_histories
from cdp_activation.core.records import InputError, ProfileEvent, parse_record
from cdp_activation.core.timeutil import MAX_TIME


def run(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--input", required=True)
    args = parser.parse_args(argv)
    job = load_config(args.config)
    engine = Engine(job.audiences, job.backfill_starts, job.export_attributes,
                    export_computed=job.export_computed, change_computed=job.change_computed)
    started = time.perf_counter()
    users = {}
    with open(args.input, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = parse_record(line)
            except InputError:
                continue
            if isinstance(record, ProfileEvent):
                users.setdefault((record.key_field, record.key), []).append(record)
    parsed = time.perf_counter()
    sizes, changes, events = [], 0, 0
    if job.identity.stitch:  # the known users take the anonymous ids they won (core.identity)
        everything = [e for history in users.values() for e in history]
        result = stitch_histories(engine, everything, MAX_TIME)
        changes = sum(len(found) for found in result.changes.values())
        events = len(everything)
    else:
        for history in users.values():
            state = engine.new_state()
            found, _ = engine.advance(state, history, MAX_TIME)
            changes += len(found)
            events += len(history)
    done = time.perf_counter()
    # State size is measured apart from the timed loop: what a user's state holds after its history
    # (per record key, without stitching).
    for history in users.values():
        state = engine.new_state()
        last = max(e.ts for e in history)
        engine.advance(state, history, last)
        sizes.append(len(engine.dump_state(state)))
    print(json.dumps({"parse_seconds": parsed - started, "engine_seconds": done - parsed,
                      "events": events, "users": len(users), "changes": changes,
                      "state_bytes_median": statistics.median(sizes) if sizes else 0,
                      "state_bytes_max": max(sizes) if sizes else 0}))
    return 0
