"""Catch-up throughput of ``ReadFromEventHubs`` against the bundled local Event Hubs endpoint.

    python -m bench.eventhubs_catchup [--events 100000] [--partitions 4] [--users 3000]
        [--max_batch_size 500] [--prefetch N] [--skip-raw] [Beam options, e.g. --runner ...]

Starts ``python -m emulators.eventhubs`` in its own process (so the endpoint does not compete with
the reader for this process's GIL), publishes ``--events`` JSON events (the benchmark generator's
records without ``received_at``, partition key = user key) with the real ``EventHubProducerClient``,
then times:

* ``raw``: the source's partition reader alone, in a plain loop (no Beam): the SDK's ceiling;
* ``pipeline``: a catch-up run, ``ReadFromEventHubs(bounded=True)`` -> count, plus the checkpoint
  commit, on the DirectRunner (or the runner given), start-up included; and the same count
  read back from the checkpoint files.

Prints one JSON line with the figures. Loopback only; the endpoint's key is a throwaway one and is
not printed.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _start_endpoint(partitions):
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.eventhubs", "--host", "127.0.0.1", "--port", "0",
         "--partitions", str(partitions)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("Endpoint="):
            return process, line.strip()
        if not line and process.poll() is not None:
            break
    process.kill()
    raise SystemExit("the local Event Hubs endpoint did not start")


def _publish(connection_string, events, users):
    from azure.eventhub import EventData, EventHubProducerClient
    from bench.make_data import generate
    by_key = {}
    # Exactly ``events`` records, the generator's duplicates and system events among them.
    for record in itertools.islice(generate(events, users, 40), events):
        record.pop("received_at", None)
        key = record.get("user_id") or record.get("anonymous_id")
        by_key.setdefault(key, []).append(json.dumps(record, separators=(",", ":")).encode())
    producer = EventHubProducerClient.from_connection_string(connection_string)
    try:
        for key, bodies in by_key.items():
            batch = producer.create_batch(partition_key=key)
            for body in bodies:
                try:
                    batch.add(EventData(body))
                except ValueError:          # full: send it and go on with a new batch
                    producer.send_batch(batch)
                    batch = producer.create_batch(partition_key=key)
                    batch.add(EventData(body))
            producer.send_batch(batch)
    finally:
        producer.close()


def _raw_read(source):
    """Every partition read to its end with the source's reader, sequentially; events/s."""
    from cdp_activation.clients.eventhubs_consumer import event_record
    fn, plan_fn = source.read_fn(), source.plan_fn()
    plan_fn.setup()
    plans = list(plan_fn.process(None))
    plan_fn.teardown()
    fn.setup()
    total, started = 0, time.perf_counter()
    try:
        for plan in plans:
            if plan.start >= plan.stop:
                continue
            reader = fn._reader(plan.partition, plan.start)   # pylint: disable=protected-access
            position = plan.start
            while position < plan.stop:
                events = reader.read(fn._max_batch_size, 5.0)  # pylint: disable=protected-access
                if not events:
                    raise SystemExit("raw read stalled at %s:%d" % (plan.partition, position))
                for event in events:
                    if event.sequence_number >= plan.stop:
                        break
                    event_record(event, plan.partition)  # the DoFn's per-event work
                    total += 1
                    position = event.sequence_number + 1
    finally:
        fn.teardown()
    seconds = time.perf_counter() - started
    return total, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--max_batch_size", type=int, default=500)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--skip-raw", dest="skip_raw", action="store_true")
    args, beam_args = parser.parse_known_args(argv)

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from cdp_activation.transforms.eventhubs_source import ReadFromEventHubs

    endpoint, connection_string = _start_endpoint(args.partitions)
    result = {"events": args.events, "partitions": args.partitions,
              "max_batch_size": args.max_batch_size, "cpus": os.cpu_count()}
    try:
        started = time.perf_counter()
        _publish(connection_string, args.events, args.users)
        result["publish_seconds"] = round(time.perf_counter() - started, 2)
        sys.stderr.write("published %d events in %.1f s\n" % (args.events,
                                                              result["publish_seconds"]))
        options = {"max_batch_size": args.max_batch_size, "prefetch": args.prefetch}
        if not args.skip_raw:
            count, seconds = _raw_read(ReadFromEventHubs(connection_string, **options))
            assert count == args.events, count
            result["raw_seconds"] = round(seconds, 2)
            result["raw_events_per_second"] = round(count / seconds)
            sys.stderr.write("raw reader: %d events in %.2f s, %.0f events/s\n"
                             % (count, seconds, count / seconds))
        with tempfile.TemporaryDirectory() as tmp:
            source = ReadFromEventHubs(connection_string, checkpoint_dir=tmp, **options)
            count_path = os.path.join(tmp, "count.txt")
            pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
            records = pipeline | "Read" >> source
            counted = (records
                       | "Count" >> beam.combiners.Count.Globally()
                       | "WriteCount" >> beam.Map(
                           lambda n, path=count_path: open(path, "w").write(str(n))))
            source.commit_checkpoints(records, after=[counted])
            started = time.perf_counter()
            pipeline.run().wait_until_finish()
            seconds = time.perf_counter() - started
            with open(count_path) as handle:
                count = int(handle.read())
            committed = sum(c.sequence_number + 1
                            for c in source.checkpoint_store.read_all().values())
        assert count == args.events == committed, (count, committed)
        result["pipeline_seconds"] = round(seconds, 2)
        result["pipeline_events_per_second"] = round(count / seconds)
        sys.stderr.write("catch-up pipeline: %d events in %.2f s, %.0f events/s (start-up "
                         "included)\n" % (count, seconds, count / seconds))
    finally:
        endpoint.terminate()
        endpoint.wait(10)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
