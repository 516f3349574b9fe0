"""Parsing input files in blocks and building local-sink message lines, in this process and in
worker processes (core.blocks, core.messages.message_lines, transforms._worker_processes): the same
records, dead letters, counts and lines whatever the block size and wherever the work is done."""
import gc
import io
import json
import os
import pickle
import signal
import time
import types

import pytest
from hypothesis import given, settings, strategies as st

from core.blocks import (block_lines, join_packed, pack_rows, parse_block, parse_rows, read_blocks,
                         unpack_rows)
from core.records import InputError, ProfileEvent, dead_letter, parse_record, time_bounds_error
from pipelines.options import worker_processes_value
from transforms._worker_processes import (WorkerProcessError, WorkerProcesses, acquire_workers,
                                          release_workers, resolve_worker_processes)


def reference_lines(data):
    """The line reader the blocks replaced: a text stream split at "\\n" only."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape", newline="\n")
    for lineno, line in enumerate(text, 1):
        line = line.rstrip("\r\n")
        if not line.strip(" \t\r\n"):
            continue
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                line = line.encode("utf-8", "surrogateescape")
        yield lineno, line


def reference_parse(data, path, time_range=None):
    """(rows per user in line order, system events, dead letters, counts), one line at a time."""
    users, system, dead, counts = {}, [], [], [0, 0, 0]
    for lineno, raw in reference_lines(data):
        counts[0] += 1
        try:
            record = parse_record(raw)
            reason = time_bounds_error(record)
            if reason is not None:
                raise InputError(reason)
        except InputError as exc:
            counts[1] += 1
            dead.append(dead_letter(raw, exc, "%s:%d" % (path, lineno)))
            continue
        if time_range is not None and not time_range[0] <= record.ts < time_range[1]:
            counts[2] += 1
            continue
        if isinstance(record, ProfileEvent):
            users.setdefault((record.key_field, record.key), []).append(tuple(record))
        else:
            system.append(record)
    return users, system, dead, tuple(counts)


def merge(blocks):
    users, earliest, system, dead, counts = {}, {}, [], [], [0, 0, 0]
    for block in blocks:
        for key, first_ts, packed in block.groups:
            rows = unpack_rows(packed)
            users.setdefault(key, []).extend(rows)
            earliest[key] = min(earliest.get(key, first_ts), first_ts)
            assert first_ts == min(r[3] for r in rows)
        system.extend(block.system)
        dead.extend(block.dead)
        counts = [a + b for a, b in zip(counts, block.counts)]
    return users, system, dead, tuple(counts)


_LINES = st.sampled_from([
    '{"user_id":"u1","event":"purchase","ts":1795000100,"properties":{"price":5}}',
    '{"user_id":"u2","event":"view","ts":"2026-11-23T10:00:00Z"}',
    '{"anonymous_id":"a1","event":"view","ts":50}\r',  # before 2000: a dead letter
    '{"user_id":"u1","event":"purchase","ts":1795000010,"properties":{"name":"caf\u00e9"}}',
    '{"kind":"system","id":"s1","ts":1795000070,"data":{"subject_type":"work","verb":"failed"}}',
    "not json", "[1]", "", "   \t", "\r", '{"user_id":"u3"}',
]).map(lambda s: s.encode("utf-8")) | st.sampled_from([b"\xff\xfe{}", b'{"user_id":"\xc3","event":"e","ts":1}'])


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=40), st.booleans(), st.integers(1, 200),
       st.sampled_from([None, (1795000040 * 10 ** 6, 1795000080 * 10 ** 6)]))
def test_blocks_parse_like_the_line_reader(lines, final_newline, block_bytes, time_range):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    blocks = list(read_blocks(io.BytesIO(data), block_bytes))
    assert b"".join(b for _, b in blocks) == data
    parsed = [parse_block(b, first, "/in/f.jsonl", time_range) for first, b in blocks]
    assert merge(parsed) == reference_parse(data, "/in/f.jsonl", time_range)


def test_block_lines_number_every_line_and_keep_undecodable_bytes():
    block = b'a\n\n  \nb\r\n\xff\n'
    assert list(block_lines(block, 10)) == [(10, "a"), (13, "b"), (14, b"\xff")]


def test_joined_groups_unpack_in_order_and_mix_formats():
    import datetime
    marshalled = parse_rows([(1, '{"user_id":"u","event":"e","ts":1795000001}')], "p").groups[0][2]
    pickled = pack_rows([("u", "e2", "e", 2, 2, "u", None, {"at": datetime.date(2026, 11, 24)}, None)])
    assert marshalled[:1] == b"m" and pickled[:1] == b"p"
    assert join_packed([marshalled]) is marshalled
    joined = join_packed([marshalled, pickled, marshalled])
    assert joined[:1] == b"M"
    assert [r[3] for r in unpack_rows(joined)] == [1795000001_000_000, 2, 1795000001_000_000]


# ------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------

#: Epoch seconds of the sample file's times (2026-11-18): records before 2000 are dead letters.
SAMPLE_BASE = 1795000000


def _sample_file(lines=400):
    rows = []
    for i in range(lines):
        if i % 37 == 0:
            rows.append(b"broken line %d" % i)
        elif i % 53 == 0:
            rows.append(b'{"kind":"system","id":"s%d","ts":%d,"data":{"subject_type":"work","verb":"failed"}}'
                        % (i, SAMPLE_BASE + i))
        else:
            rows.append(b'{"user_id":"u%d","event":"purchase","ts":%d,"properties":{"n":%d}}'
                        % (i % 7, SAMPLE_BASE + 1000 - i, i))
    return b"\n".join(rows) + b"\n"


@pytest.fixture
def workers():
    pool = WorkerProcesses(2)
    yield pool
    pool.close()


def test_workers_give_the_blocks_back_in_order_as_parsed_here(workers):
    data = _sample_file()
    blocks = list(read_blocks(io.BytesIO(data), 700))
    assert len(blocks) > 6
    time_range = (SAMPLE_BASE * 10 ** 6, (SAMPLE_BASE + 900) * 10 ** 6)
    here = [parse_block(b, first, "/in/f.jsonl", time_range) for first, b in blocks]
    there = list(workers.map_ordered("parse_block", ((b, first, "/in/f.jsonl", time_range)
                                                      for first, b in blocks)))
    assert there == here
    assert merge(there) == reference_parse(data, "/in/f.jsonl", time_range)


def test_a_failing_block_raises_with_the_workers_traceback(workers):
    with pytest.raises(WorkerProcessError) as info:
        workers.submit("parse_block", b'{"user_id":"u","event":"e","ts":1795000001}\n', 5, "/in/f.jsonl",
                       ("not", "comparable")).result()
    assert "failed in parse_block" in str(info.value) and "TypeError" in str(info.value)
    # The worker survives its request's failure and parses the next one.
    assert workers.submit("parse_block", b"x\n", 1, "/in/f.jsonl").result().counts == (1, 1, 0)
    with pytest.raises(ValueError, match="unknown task"):
        workers.submit("os.system", "true")


def test_a_worker_that_dies_is_an_error_not_a_short_read(workers):
    workers.submit("parse_block", b"x\n", 1, "/in/f.jsonl").result()  # starts a worker
    for child in workers._children:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with pytest.raises(WorkerProcessError, match="exited with code -9"):
        list(workers.map_ordered("parse_block", [(b"x\n", 1, "/in/f.jsonl")] * 2))


def test_close_ends_the_workers():
    pool = WorkerProcesses(2)
    list(pool.map_ordered("parse_block", [(b"x\n", 1, "/in/f.jsonl")] * 4))
    children = list(pool._children)
    assert children
    from transforms._worker_processes import worker_peaks_kb
    before = len(worker_peaks_kb())
    pool.close()
    assert all(child.returncode == 0 for child in children)
    if os.path.exists("/proc/self/status"):  # Linux: each worker's own peak, in KB
        peaks = worker_peaks_kb()[before:]
        assert len(peaks) == len(children) and all(0 < kb < 1 << 20 for kb in peaks)


def test_workers_report_the_cpu_time_of_each_task(workers):
    from transforms._worker_processes import worker_task_cpu
    before = worker_task_cpu().get("parse_block", (0, 0.0))
    data = _sample_file(20000)  # enough lines for a measurable parse
    blocks = list(read_blocks(io.BytesIO(data), 200_000))
    started = time.process_time()
    list(workers.map_ordered("parse_block", ((b, first, "/in/f.jsonl") for first, b in blocks)))
    waited = time.process_time() - started
    with pytest.raises(WorkerProcessError):  # a failed task's time counts too
        workers.submit("parse_block", b'{"user_id":"u","event":"e","ts":1795000001}\n', 1, "/in/f.jsonl",
                       ("not", "comparable")).result()
    calls, seconds = worker_task_cpu()["parse_block"]
    assert calls - before[0] == len(blocks) + 1
    # The workers' time, not this process's: parsing 20k lines takes far more than waiting for it.
    assert seconds - before[1] > 0.02 and seconds - before[1] > waited / 2


def _collection_enabled_here():
    return gc.isenabled()


def _fail():
    raise RuntimeError("task failed")


def test_automatic_collection_waits_while_a_task_runs_and_resumes_after_it(monkeypatch):
    from transforms import _worker_processes as wp
    monkeypatch.setitem(wp.TASKS, "collection_state", (__name__, "_collection_enabled_here"))
    monkeypatch.setitem(wp.TASKS, "fail", (__name__, "_fail"))
    requests = io.BytesIO()
    for task in ("collection_state", "fail", "collection_state"):
        wp._send(requests, pickle.dumps((task, ()), protocol=5))
    requests.seek(0)
    replies = io.BytesIO()
    assert gc.isenabled()
    assert wp._serve(requests, replies) == 0
    assert gc.isenabled()  # also after a task that failed
    replies.seek(0)
    answers = [pickle.loads(wp._receive(replies)) for _ in range(3)]
    assert [answer[:2] for answer in (answers[0], answers[2])] == [("ok", False), ("ok", False)]
    assert answers[1][0] == "error" and "task failed" in answers[1][1]
    assert all(answer[2] >= 0 for answer in answers)  # each with the task's CPU time


def test_parse_file_with_workers_emits_what_it_emits_in_process(monkeypatch):
    from transforms import read
    monkeypatch.setattr(read, "block_bytes", lambda size: 500)
    monkeypatch.setattr(read, "CHUNK_BYTES", 2000)
    data = _sample_file(1200)
    time_range = (SAMPLE_BASE * 10 ** 6, (SAMPLE_BASE + 990) * 10 ** 6)

    def run(processes):
        fn = read._ParseFile(time_range, 0.0, processes)
        fn.setup()
        readable = types.SimpleNamespace(
            metadata=types.SimpleNamespace(path="/in/f.jsonl", size_in_bytes=len(data)),
            open=lambda: io.BytesIO(data))
        try:
            outputs = list(fn.process(readable))
        finally:
            fn.teardown()
        return [(getattr(o, "tag", None), getattr(o, "value", o)) for o in outputs], fn

    here, _ = run(0)
    there, fn = run(2)
    assert there == here
    assert fn._workers is None  # teardown closed them
    profile = [v for tag, v in here if tag is None]
    users = reference_parse(data, "/in/f.jsonl", time_range)[0]
    assert len(profile) > len(users)  # flushed in chunks
    assert sum(len(unpack_rows(v[1])) for v in profile) == sum(len(rows) for rows in users.values())


def test_a_file_is_read_in_a_fixed_number_of_blocks_within_bounds():
    """A parsed block holds a group per user in it: a fixed number of blocks per file keeps the
    merges linear in the users where fixed-size blocks made them grow as users x blocks."""
    from transforms.read import BLOCKS_PER_FILE, MAX_BLOCK_BYTES, block_bytes
    assert block_bytes(0) == block_bytes(10_000) == 1 << 20
    for size in (80 << 20, 100 << 20, 8 * MAX_BLOCK_BYTES):
        assert -(-size // block_bytes(size)) == BLOCKS_PER_FILE
    assert block_bytes(1 << 40) == MAX_BLOCK_BYTES


def test_worker_processes_option_and_its_resolution():
    assert worker_processes_value("auto") == "auto" and worker_processes_value("3") == 3
    for bad in ("-1", "two"):
        with pytest.raises(ValueError):
            worker_processes_value(bad)
    cpus = os.cpu_count() or 1
    assert resolve_worker_processes("auto", None) == cpus
    assert resolve_worker_processes("auto", "DirectRunner") == cpus
    assert resolve_worker_processes("auto", "DataflowRunner") == 0
    assert resolve_worker_processes("auto", "FlinkRunner") == 0
    assert resolve_worker_processes(0, "DirectRunner") == 0
    assert resolve_worker_processes(3, "DataflowRunner") == 3


# ------------------------------------------------------------------------------------------------
# Message lines
# ------------------------------------------------------------------------------------------------

def test_message_lines_are_the_built_messages_encoded_and_sorted():
    from core.config import EventHubSettings
    from core.jsonlines import encode_sorted_lines
    from core.messages import audience_names, build_message, message_lines, message_sort_key
    audiences = [types.SimpleNamespace(id="a%d" % i, slug="s%d" % i) for i in range(3)]
    settings = EventHubSettings(connection_string=None, subscription_id="sub", audiences=[0, 2],
                                existing_users=True, start=None, user_fields=None)
    day = 86_400_000_000
    users = [
        ("user_id", "u1", [(3 * day, [(0, "enter", 3 * day)], {"email": "x@y"}, day, 3 * day, False),
                           (2 * day, [(2, "enter", 2 * day), (0, "exit", day)], {}, day, 2 * day, False)]),
        ("anonymous_id", "a1", [(day, [(1, "enter", day)], {}, day, day, False)]),  # not exported
        ("user_id", "u2", []),
    ]
    got = message_lines(settings, audience_names(audiences), users)
    expected = []
    for key_field, key, changes in users:
        messages = [m for m in (build_message(c, key_field, key, settings, audiences) for c in changes)
                    if m is not None]
        expected.append(encode_sorted_lines(messages, message_sort_key))
    assert got == expected
    assert [len(lines) for lines in got] == [2, 0, 0]
    assert all(line.endswith(b"\n") for _, line in got[0])


_KEYS = st.sampled_from(["", "u1", "u2", "\u00e9", "a\x00b", "a", "\U0001f600"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_KEYS, _KEYS, st.integers(0, 5), st.integers(0, 999_999), st.booleans(),
                          st.sampled_from([None, 7, "x\ny", "\u2028"]), st.integers(0, 4)),
                max_size=40),
       st.integers(1, 5))
def test_merged_runs_are_the_lines_sorted_by_message_key(specs, n_runs):
    """Whatever batches the messages fall in, a user's in one run or spread over several (a user
    evaluated more than once), the merged runs are the lines in ``message_sort_key`` order."""
    from core.jsonlines import encode_sorted_lines
    from core.messages import (merge_message_line_runs, message_id, message_sort_key,
                               pack_message_lines)
    runs = [[] for _ in range(n_runs)]
    everything = []
    for user_id, anonymous_id, second, micros, backfill, trait, run in specs:
        data = {"user_id": user_id} if user_id else {}
        if anonymous_id:
            data["anonymous_id"] = anonymous_id
        if trait is not None:
            data["note"] = trait
        message = {"data": data, "subscription_id": "s",
                   "timestamp": "2026-01-01T00:00:%02d.%06dZ" % (second, micros)}
        if backfill:
            message["backfill"] = True
        message["message_id"] = message_id(message)
        pair = encode_sorted_lines([message], message_sort_key)[0]
        runs[run % n_runs].append(pair)
        everything.append(pair)
    packed = [pack_message_lines(pairs) for pairs in runs if pairs]
    merged = merge_message_line_runs(packed)
    assert b"".join(merged) == b"".join(line for _, line in sorted(everything, key=lambda p: p[0]))
    assert all(chunk.endswith(b"\n") for chunk in merged)


def test_a_run_of_many_messages_is_compressed():
    """Runs cross Beam's data plane on their way to the sink: they go compressed."""
    from core.jsonlines import encode_sorted_lines
    from core.messages import merge_message_line_runs, message_id, message_sort_key, pack_message_lines
    messages = []
    for i in range(2000):
        message = {"data": {"user_id": "user%06d" % (i // 4), "segment_events": [
            {"id": "fb", "slug": "frequent_buyers", "event": "enter"}]},
            "subscription_id": "w-eh", "timestamp": "2026-01-01T00:%02d:%02dZ" % (i % 60, i % 57)}
        message["message_id"] = message_id(message)
        messages.append(message)
    pairs = encode_sorted_lines(messages, message_sort_key)
    lines = b"".join(line for _, line in pairs)
    run = pack_message_lines(pairs)
    assert len(run) < len(lines) / 3
    assert b"".join(merge_message_line_runs([run])) == b"".join(
        line for _, line in sorted(pairs, key=lambda p: p[0]))


def test_pipelines_with_workers_write_what_they_write_in_process(tmp_path, monkeypatch):
    """Both pipelines, with and without worker processes (parse, message lines and, in the
    replay, evaluation): the same files, byte for byte, and the same metrics, on a random data set
    with every node type, bad lines and system events."""
    import yaml

    import pipelines.replay
    import pipelines.stream
    from tests import datagen
    from transforms import read
    config, lines = datagen.generate(7, n_users=120, days=20)
    config_path, input_path = tmp_path / "config.yaml", tmp_path / "events.jsonl"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    input_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Several blocks, so the parse goes to workers.
    monkeypatch.setattr(read, "block_bytes", lambda size: 32 << 10)
    for var in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"):
        monkeypatch.delenv(var, raising=False)

    def outputs(module, processes):
        out = tmp_path / ("%s-%d" % (module.__name__, processes))
        status = module.run(["--config", str(config_path), "--input", str(input_path), "--output_dir",
                             str(out), "--progress_seconds", "0", "--worker_processes", str(processes)])
        assert not status
        with open(out / "summary.json", encoding="utf-8") as fh:
            summary = json.load(fh)
        files = {"summary": {k: summary[k] for k in ("audiences", "deadlettered", "duplicates",
                                                     "events_applied", "late", "records_read")}}
        for directory, _, names in os.walk(out):
            for name in names:
                path = os.path.join(directory, name)
                if name.endswith(".jsonl") and name != "system_events.jsonl":
                    with open(path, "rb") as fh:
                        files[os.path.relpath(path, out)] = fh.read()
        return files

    assert input_path.stat().st_size > 4 * (32 << 10)
    for module in (pipelines.replay, pipelines.stream):
        here, there = outputs(module, 0), outputs(module, 2)
        assert there == here
        assert here["summary"]["events_applied"] and here["summary"]["audiences"]
        assert any(name.startswith("eventhub") and data for name, data in here.items())
        assert here.get(os.path.join("deadletter", "input.jsonl"))


def test_dofns_share_one_set_of_workers():
    first = acquire_workers(2)
    second = acquire_workers(2)
    assert first is second
    first.submit("parse_block", b"x\n", 1, "p").result()
    children = list(first._children)
    release_workers(second)
    assert all(child.poll() is None for child in children)  # still in use
    release_workers(first)
    assert all(child.returncode == 0 for child in children)
    again = acquire_workers(2)
    assert again is not first
    release_workers(again)


def test_histories_evaluated_in_a_worker_are_the_engines_results(workers):
    from core.history import EngineSpec, evaluate_histories, unpack_changes
    from core.timeutil import MAX_TIME
    audiences = [
        {"id": "fb", "slug": "frequent_buyers",
         "condition": {"event": "purchase", "within": "7d", "min_count": 3}},
        {"id": "gold", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}},
    ]
    spec = EngineSpec(audiences, export_attributes=["tier"])
    day = 86_400
    users = []
    for u in range(5):
        lines = ['{"user_id":"u%d","event":"purchase","ts":%d}' % (u, (d + u) * day)
                 for d in range(u + 2)]
        lines.append('{"user_id":"u%d","event":"visit","ts":%d,"traits":{"tier":"gold"}}' % (u, 3 * day))
        users.append((("user_id", "u%d" % u), [pack_rows([tuple(parse_record(line)) for line in lines])]))
    here = evaluate_histories(spec, users)
    results, totals = workers.submit("evaluate_histories", spec, users).result()
    # Packed values are compared unpacked: marshal's back-references depend on the process.
    unpacked = [(unpack_changes(changes), unpack_rows(rows)) for changes, rows, _ in results]
    assert unpacked == [(unpack_changes(changes), unpack_rows(rows)) for changes, rows, _ in here[0]]
    assert all(saved is None for _, _, saved in results)  # the spec keeps no state
    assert (totals.events, totals.duplicates, totals.late, totals.enters, totals.exits) == (
        here[1].events, here[1].duplicates, here[1].late, here[1].enters, here[1].exits)
    engine = spec.build()
    for (key, groups), (changes, rows, _) in zip(users, results):
        events = [ProfileEvent._make(r) for g in groups for r in unpack_rows(g)]
        expected_changes, expected_rows = engine.advance(engine.new_state(), events, MAX_TIME)
        assert (unpack_changes(changes) if changes is not None else []) == [
            tuple(c) for c in expected_changes]
        assert unpack_rows(rows) == [(tuple(r.event), r.attributes) for r in expected_rows]
    assert totals.events == sum(u + 3 for u in range(5))
    assert totals.enters[0] >= 1 and totals.enters[1] == 5


def test_ordered_batches_give_every_reply_in_order_and_bound_what_is_in_flight(workers):
    from core.config import EventHubSettings
    from core.messages import AudienceName, merge_message_line_runs, message_line_runs
    from transforms._worker_processes import OrderedBatches
    settings = EventHubSettings(connection_string=None, subscription_id="sub", audiences=[0],
                                existing_users=False, start=None, user_fields=None)
    names = [AudienceName("a0", "s0")]
    day = 86_400_000_000
    users = [("user_id", "u%d" % i, [(i * day, [(0, "enter", i * day)], {}, day, i * day, False)])
             for i in range(11)]
    batches = OrderedBatches(workers, "message_line_runs", 2, settings, names)
    during, replies, places = 0, [], []
    for index, user in enumerate(users):
        for reply, batch_places in batches.add([user], index):
            during += 1
            replies.extend(reply)
            places.extend(batch_places)
    for reply, batch_places in batches.finish():
        replies.extend(reply)
        places.extend(batch_places)
    assert places == list(range(11))
    assert replies == message_line_runs(settings, names, [[user] for user in users])
    assert b"".join(merge_message_line_runs(replies)).count(b"\n") == 11
    # Five full batches are sent while adding (the sixth at finish); four may wait in flight.
    assert during == 5 - 2 * workers.processes
