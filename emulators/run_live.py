"""``./run_local.sh --live``: a live stream a person can watch, on Prism.

    python -m emulators.run_live [--config examples/live.yaml] [--rate 20] [--users 200]
                                 [--seconds N] [--quiet] [--output_dir out] [pipeline options]

Starts the local Event Hubs endpoint (:mod:`emulators.eventhubs`) twice on loopback, one with the
input hub ``events`` and one with the output hub ``audiences``; a generator that publishes sample
shop events with the current time, about ``--rate`` per second; and ``pipelines.stream`` reading
the input hub live (``--streaming``, ``eventhubs://events?...&mode=live``), with no ``--runner``, so
on Prism, sending the audience messages of ``--config`` to the output hub. Every enter and exit is
printed as it arrives in the output hub, until Ctrl-C (or ``--seconds``), then a summary: events
published, messages received, and the latencies:

* enter: from the enqueue time of the event that caused it to the message's enqueue time in the
  output hub;
* exit: from the time it was due (e.g. the last purchase + 30 s, with no new event) to its arrival.

The summary is also written to ``OUTPUT_DIR/live_summary.json``; the pipeline's own output and log
go to ``OUTPUT_DIR`` and ``OUTPUT_DIR/pipeline.log``. Other arguments go to the pipeline (e.g.
``--runner=DirectRunner``, which ignores the watermark and is refused or warned about).
"""
import argparse
import datetime
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time

from emulators.eventhubs import LocalEventHubs, partition_for_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_HUB, OUTPUT_HUB, PARTITIONS = "events", "audiences", 4
INPUT_VARIABLE, OUTPUT_VARIABLE = "LIVE_INPUT_CONNECTION_STRING", "LIVE_OUTPUT_CONNECTION_STRING"
#: How far the source holds its watermark behind the enqueued times: events are published with
#: their own time as ``ts`` a few milliseconds before they are enqueued.
WATERMARK_DELAY_SECONDS = 2
#: How long a busy partition's read runs before Prism gets what it read (``max_read_seconds`` of
#: the source): it bounds how long an event waits in the reader.
MAX_READ_SECONDS = 1.0

COUNTRIES = ["US", "DE", "FR", "GB", "CA", "ES", "NL", "JP"]
PRODUCTS = [("sku-1001", 129.0), ("sku-1002", 89.5), ("sku-1003", 12.99), ("sku-1004", 210.0)]


def _rfc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _clock(seconds):
    return datetime.datetime.fromtimestamp(seconds).strftime("%H:%M:%S")


def sample_event(rng, n, users, now):
    """One shop event of a random user at ``now``: mostly page views, some carts and purchases."""
    user = "cust-%04d" % rng.randrange(users)
    roll = rng.random()
    event = {"event_id": "live-%d" % n, "user_id": user, "ts": _rfc(now)}
    if roll < 0.04:
        sku, price = rng.choice(PRODUCTS)
        event.update(event="purchase", properties={"sku": sku, "price": price, "currency": "EUR"})
    elif roll < 0.12:
        sku, price = rng.choice(PRODUCTS)
        event.update(event="add_to_cart", properties={"sku": sku, "price": price})
    elif roll < 0.15:
        event.update(event="profile", traits={"email": "%s@example.com" % user,
                                              "country": rng.choice(COUNTRIES)})
    else:
        event.update(event="page_view", properties={"url": "/p/%d" % rng.randrange(50)})
    return event


class Generator(threading.Thread):
    """Publishes ``rate`` sample events per second, in ticks of 0.1 s, one batch per partition."""

    def __init__(self, connection_string, rate, users, seed=1):
        super().__init__(name="live-generator", daemon=True)
        self._connection_string = connection_string
        self._rate = float(rate)
        self._users = users
        self._rng = random.Random(seed)
        self.stopping = threading.Event()
        self.published = 0
        self.error = None

    def run(self):
        from azure.eventhub import EventData, EventHubProducerClient
        tick = 0.1
        try:
            producer = EventHubProducerClient.from_connection_string(
                self._connection_string, retry_total=3)
            with producer:
                started = time.monotonic()
                while not self.stopping.is_set():
                    due = int((time.monotonic() - started + tick) * self._rate) - self.published
                    by_partition = {}
                    now = time.time()
                    for _ in range(max(0, due)):
                        event = sample_event(self._rng, self.published, self._users, now)
                        self.published += 1
                        partition = partition_for_key(event["user_id"], PARTITIONS)
                        by_partition.setdefault(partition, []).append(json.dumps(event))
                    for partition, bodies in by_partition.items():
                        batch = producer.create_batch(partition_id=str(partition))
                        for body in bodies:
                            try:
                                batch.add(EventData(body))
                            except ValueError:           # full: send it and start another
                                producer.send_batch(batch)
                                batch = producer.create_batch(partition_id=str(partition))
                                batch.add(EventData(body))
                        producer.send_batch(batch)
                    self.stopping.wait(max(0.0, tick - (time.monotonic() - started) % tick))
        except Exception as exc:  # reported by the caller
            self.error = exc


def audience_changes(event):
    """``(user, slug, "enter"|"exit", due time in seconds)`` of an output hub message."""
    data = json.loads(event.body)["data"]
    for change in data.get("segment_events") or []:
        kind = change["event"]
        yield data["user_id"], change["slug"], kind, _seconds(change["enter" if kind == "enter"
                                                                     else "exit"])


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def summarize(source, destination, published, seconds, rate, since=0.0, ended=None):
    """The run's figures: counts, enter latency (from the input event's enqueue time) and how
    late exits arrived after their due time, in seconds; the latencies of changes due from
    ``since`` (epoch seconds) on, so that the backlog of the pipeline's start-up is left out.
    ``behind_s``: how far behind the input the last enter that arrived was when the run ended
    (``ended``, epoch seconds): near the latency when the pipeline keeps up, growing when not."""
    enqueued = {}
    for event in source.events():
        record = json.loads(event.body)
        enqueued[(record["user_id"], record["ts"])] = event.enqueued_time.timestamp()
    enters, exits, per_audience, latest = [], [], {}, None
    for event in destination.events():
        arrived = event.enqueued_time.timestamp()
        for user, slug, kind, due in audience_changes(event):
            figures = per_audience.setdefault(slug, {"enter": 0, "exit": 0})
            figures[kind] += 1
            if due < since:
                continue
            if kind == "enter":
                latest = due if latest is None else max(latest, due)
                cause = enqueued.get((user, _rfc(due)))
                if cause is not None:
                    enters.append(arrived - cause)
            else:
                exits.append(arrived - due)

    def stats(values):
        return {"count": len(values), "p50": percentile(values, 50),
                "p99": percentile(values, 99), "max": max(values) if values else None}
    return {"seconds": round(seconds, 1), "rate": rate, "published": published,
            "latencies_from": _rfc(since),
            "messages": len(destination.events()), "audiences": per_audience,
            "enter_latency_s": stats(enters), "exit_lateness_s": stats(exits),
            "behind_s": None if latest is None or ended is None else round(ended - latest, 1)}


def print_summary(summary, stream=sys.stdout):
    w = stream.write
    w("Summary (live, %.0f s at %g events/s)\n" % (summary["seconds"], summary["rate"]))
    w("  events published %d, audience messages received %d\n"
      % (summary["published"], summary["messages"]))
    if summary["behind_s"] is not None:
        w("  at the stop, the last enter that had arrived was caused %.1f s earlier\n"
          % summary["behind_s"])
    for slug, figures in sorted(summary["audiences"].items()):
        w("    %-20s enters %5d  exits %5d\n" % (slug, figures["enter"], figures["exit"]))
    if "cpu_s" in summary:
        w("  CPU: pipeline and Prism %.1f s, endpoints and generator %.1f s\n"
          % (summary["cpu_s"]["pipeline_and_prism"], summary["cpu_s"]["endpoints_and_generator"]))
    w("  latencies of the changes due from %s on:\n" % summary["latencies_from"])
    for label, key in (("enter latency (event enqueued -> message arrived)", "enter_latency_s"),
                       ("exit lateness (due time -> message arrived)", "exit_lateness_s")):
        s = summary[key]
        if s["count"]:
            w("    %s: p50 %.2f s, p99 %.2f s, max %.2f s (%d)\n"
              % (label, s["p50"], s["p99"], s["max"], s["count"]))
        else:
            w("    %s: none arrived\n" % label)


def _watch(destination, proc, generator, args, deadline):
    """Prints audience changes as they arrive until the deadline, Ctrl-C or the pipeline ends."""
    seen = 0
    while True:
        events = destination.events()
        for event in events[seen:]:
            arrived = event.enqueued_time.timestamp()
            for user, slug, kind, due in audience_changes(event):
                if args.quiet:
                    continue
                when = "event at" if kind == "enter" else "due at"
                sys.stdout.write("%s  %-5s %-18s %-10s (%s %s, +%.1f s)\n" % (
                    _clock(arrived), kind, slug, user, when, _clock(due), arrived - due))
        sys.stdout.flush()
        seen = len(events)
        if proc.poll() is not None:
            return "the pipeline exited with status %d (see %s)" % (proc.returncode, args.log)
        if generator.error is not None:
            return "the generator failed: %s" % generator.error
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def stop(proc: subprocess.Popen, grace_seconds: float = 60) -> None:
    """Stops a pipeline started in a session of its own as Ctrl-C would (SIGINT: it ends its runner
    and prints its summary), and kills it if it has not ended after ``grace_seconds``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m emulators.run_live", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(ROOT, "examples", "live.yaml"),
                        help="job config; its Event Hub works send to the output hub through "
                             "${%s} (default examples/live.yaml)" % OUTPUT_VARIABLE)
    parser.add_argument("--rate", type=float, default=20.0, help="events published per second")
    parser.add_argument("--users", type=int, default=200, help="distinct users in the sample")
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="latencies count changes due this many seconds after the start "
                             "(the first events wait for the pipeline to start)")
    parser.add_argument("--max_read_seconds", type=float, default=MAX_READ_SECONDS,
                        help="the source's max_read_seconds (see transforms/eventhubs_source.py)")
    parser.add_argument("--output_dir", default="out", help="the pipeline's output directory")
    args, pipeline_args = parser.parse_known_args(argv)
    if args.rate <= 0 or args.users <= 0:
        parser.error("--rate and --users must be positive")
    os.makedirs(args.output_dir, exist_ok=True)
    args.log = os.path.join(args.output_dir, "pipeline.log")
    source = LocalEventHubs(hub=INPUT_HUB, partitions=PARTITIONS).start()
    destination = LocalEventHubs(hub=OUTPUT_HUB, partitions=PARTITIONS).start()
    generator = Generator(source.connection_string, args.rate, args.users)
    env = dict(os.environ, **{INPUT_VARIABLE: source.connection_string,
                              OUTPUT_VARIABLE: destination.connection_string})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    uri = ("eventhubs://%s?connection_string_env=%s&mode=live&watermark_delay_seconds=%g"
           "&max_read_seconds=%g" % (INPUT_HUB, INPUT_VARIABLE, WATERMARK_DELAY_SECONDS,
                                     args.max_read_seconds))
    command = [sys.executable, "-m", "pipelines.stream", "--config", args.config, "--streaming",
               "--input", uri, "--output_dir", args.output_dir] + pipeline_args
    sys.stdout.write("local Event Hubs: input hub '%s' on %s, output hub '%s' on %s\n"
                     % (INPUT_HUB, source.endpoint, OUTPUT_HUB, destination.endpoint))
    sys.stdout.write("publishing %g events/s of %d users; pipeline log: %s; Ctrl-C stops\n"
                     % (args.rate, args.users, args.log))
    sys.stdout.flush()
    started, started_at = time.monotonic(), time.time()
    generator.start()
    with open(args.log, "w", encoding="utf-8") as log:
        # Its own process group: Ctrl-C reaches this process only, which then stops the pipeline.
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        problem = None
        try:
            problem = _watch(destination, proc, generator, args,
                             None if args.seconds is None else started + args.seconds)
        except KeyboardInterrupt:
            sys.stdout.write("\nstopping\n")
        finally:
            stopped_at = time.time()
            generator.stopping.set()
            generator.join(10)
            stop(proc)
    seconds = time.monotonic() - started
    summary = summarize(source, destination, generator.published, seconds, args.rate,
                        since=started_at + args.warmup, ended=stopped_at)
    # CPU seconds: the pipeline with its Prism process (reaped children), and this process (the
    # two endpoints and the generator); with a shared machine they say more than the latencies.
    children, own = (resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN,
                                                         resource.RUSAGE_SELF))
    summary["cpu_s"] = {"pipeline_and_prism": round(children.ru_utime + children.ru_stime, 1),
                        "endpoints_and_generator": round(own.ru_utime + own.ru_stime, 1)}
    source.stop()
    destination.stop()
    with open(os.path.join(args.output_dir, "live_summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print_summary(summary)
    if problem:
        with open(args.log, encoding="utf-8", errors="replace") as fh:
            errors = [line.strip() for line in fh if line.startswith("error:")]
        sys.stderr.write("error: %s\n" % (errors[-1][len("error: "):] if errors else problem))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
