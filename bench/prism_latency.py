"""Live latency of the stream on Prism: from an event's enqueue time to its audience message.

    python -m bench.prism_latency --rate 1000 --seconds 60 [--warmup 30] [--users 5000]
        [--config examples/live.yaml] [--max_tail 120] [--workdir /tmp/prism-latency]
        [pipeline options]

Starts, each in its own process so that they share the machine's cores rather than one
interpreter: the project's local Event Hubs endpoint with the input hub ``events``
(:mod:`emulators.eventhubs`), a publisher that sends sample shop events with the current time at
``--rate`` per second through the azure-eventhub SDK (:class:`emulators.run_live.Generator`), and
``pipelines.stream`` reading the input hub live (``mode=live``) with no ``--runner``, so on Prism,
sending the audience messages of ``--config`` to the output hub ``audiences`` of a second endpoint
in this process, which reads it back with the SDK's ``EventHubConsumerClient`` as messages arrive.

What is measured, over the changes due in the window ``[start + warmup, start + warmup + seconds)``
(the warmup leaves out the backlog of the pipeline's start-up), each from the message's enqueue
time in the output hub and from its receipt by the SDK:

* enter latency: from the enqueue time, in the input hub, of the event that made a user enter (a
  change whose time is the ``ts`` of one of the user's events was caused by it; an exit on a
  purchase is reported the same way);
* delayed exit lateness: from the time a delayed exit was due (the last qualifying event + the
  audience's window, with no new event) to the exit message's arrival, the count of those that
  arrived before their time beside it. On a runner that fires event-time timers when the
  watermark passes them it includes the source's ``watermark_delay_seconds`` (2 s). Prism 2.62
  fires a key's pending event-time timers with the key's next bundle, whatever the watermark
  (apache/beam#35090, fixed in later Prism), so there most delayed exits arrive early.

The publisher goes on after the window until the output has passed it (:func:`past_window`), or
for at most ``--max_tail`` seconds (``passed_window`` false). ``published_rate`` is the rate the
publisher reached over the window; ``sustained`` (:func:`sustained`) says whether the pipeline
kept up with it (the enter latency p99 within ``--max_latency``).

Writes ``<workdir>/prism_latency.json`` and prints a summary. Loopback only; not a test.
"""
import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from emulators.eventhubs import partition_for_key  # noqa: E402
from emulators.run_live import (INPUT_HUB, INPUT_VARIABLE, OUTPUT_HUB, OUTPUT_VARIABLE,  # noqa: E402
                                PARTITIONS, WATERMARK_DELAY_SECONDS, _rfc, _seconds,
                                percentile, stop)
from bench._tree import tree_stats  # noqa: E402

#: How far past the window's end a change must be due before the window counts as complete.
COMPLETE_MARGIN_SECONDS = 2.0


# -- the pure part: figures from what was enqueued and what arrived --------------------------------

def changes_of(body):
    """``(user, slug, "enter"|"exit", due seconds)`` of an output hub message body (Lytics format:
    an enter is due at its cause's ``ts``, an exit at the time it was due)."""
    data = json.loads(body)["data"]
    for change in data.get("segment_events") or []:
        kind = change["event"]
        yield data["user_id"], change["slug"], kind, _seconds(change[kind])


def _stats(values):
    return {"count": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None}


def figures(enqueued, arrivals, window_start, window_end):
    """The latency figures of the changes due in ``[window_start, window_end)`` (epoch seconds).

    ``enqueued``: ``{(user_id, ts text): enqueue time in the input hub (s)}``.
    ``arrivals``: ``[(body, enqueue time in the output hub (s), receipt time (s))]``.

    A change whose time is the ``ts`` of one of the user's input events was caused by that event
    (every enter of a first qualifying event, an exit on a purchase): its latency runs from that
    event's enqueue time. Any other change is delayed, made by a timer when the watermark passed
    its time with no new event (an exit 30 s after the last qualifying event): its lateness runs
    from that time. Each is given from the output hub's enqueue time and from the receipt time;
    ``early`` counts delayed changes that arrived before they were due.
    """
    caused = {"enter": ([], []), "exit": ([], [])}
    delayed = {"enter": ([], []), "exit": ([], [])}
    halves = ([], [])
    middle = (window_start + window_end) / 2
    messages = 0
    for body, arrived, received in arrivals:
        messages += 1
        for user, _slug, kind, due in changes_of(body):
            if not window_start <= due < window_end:
                continue
            cause = enqueued.get((user, _rfc(due)))
            if cause is not None:
                caused[kind][0].append(arrived - cause)
                caused[kind][1].append(received - cause)
                if kind == "enter":
                    halves[due >= middle].append(arrived - cause)
            else:
                delayed[kind][0].append(arrived - due)
                delayed[kind][1].append(received - due)
    result = {"messages": messages}
    for kind in ("enter", "exit"):
        for name, (at_hub, at_receipt) in (("%s_latency" % kind, caused[kind]),
                                           ("delayed_%s_lateness" % kind, delayed[kind])):
            result[name + "_s"] = _stats(at_hub)
            result[name + "_at_receipt_s"] = _stats(at_receipt)
        result["delayed_%s_lateness_s" % kind]["early"] = sum(1 for v in delayed[kind][0] if v < 0)
    # A pipeline that keeps up has the same enter latency in both halves of the window; one
    # that falls behind has it growing.
    result["enter_latency_p50_by_half_s"] = [percentile(h, 50) for h in halves]
    return result


def past_window(seen, window_end, partitions=PARTITIONS):
    """Whether the pipeline's output has passed the window: in every input partition, an enter
    caused ``COMPLETE_MARGIN_SECONDS`` or more after its end (so that partition was read up to
    there; an enter received before its time was fired early and says nothing), and an exit due
    that late (a runner that fires timers on time has then fired every exit due in the window).
    ``seen``: ``{"enter"|"exit": [(user, due, receipt time), ...]}``; the publisher routes a
    user's events to one partition (:func:`emulators.eventhubs.partition_for_key`)."""
    bound = window_end + COMPLETE_MARGIN_SECONDS
    read = {partition_for_key(user, partitions) for user, due, received in seen["enter"]
            if bound <= due <= received}
    return (len(read) == partitions
            and any(bound <= due for _, due, _ in seen["exit"]))


# -- the processes -------------------------------------------------------------------------------

def _serve_input(conn, partitions):
    """Child process: the input hub's endpoint. Sends its connection string, serves until told to
    stop, then sends ``{(user_id, ts): enqueue time (s)}`` of every event it stored."""
    from emulators.eventhubs import LocalEventHubs
    hub = LocalEventHubs(hub=INPUT_HUB, partitions=partitions).start()
    conn.send(hub.connection_string)
    conn.recv()
    hub.stop()
    enqueued = {}
    for event in hub.events():
        record = json.loads(event.body)
        enqueued[(record["user_id"], record["ts"])] = event.enqueued_time.timestamp()
    conn.send(enqueued)
    conn.close()


def _publish(connection_string, rate, users, stopping, published, failure):
    """Child process: publishes ``rate`` events per second until ``stopping`` is set."""
    from emulators.run_live import Generator
    generator = Generator(connection_string, rate, users)
    generator.start()
    while not stopping.wait(0.2):
        published.value = generator.published
        if generator.error is not None or not generator.is_alive():
            break
    generator.stopping.set()
    generator.join(10)
    published.value = generator.published
    failure.value = repr(generator.error)[:200].encode() if generator.error else b""


class OutputReader:
    """Reads the output hub with the SDK as messages arrive: ``(body, enqueue time, receipt)``."""

    def __init__(self, connection_string):
        from azure.eventhub import EventHubConsumerClient
        self._client = EventHubConsumerClient.from_connection_string(
            connection_string, consumer_group="$Default")
        self.arrivals = []
        self.seen = {"enter": [], "exit": []}   # (user, due, receipt time) of each change
        self.error = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._client.receive_batch, daemon=True, kwargs={
            "on_event_batch": self._on_batch, "on_error": self._on_error,
            "starting_position": "-1", "max_batch_size": 300, "max_wait_time": 0.2})

    def start(self):
        self._thread.start()
        return self

    def _on_batch(self, _context, events):
        received = time.time()
        with self._lock:
            for event in events:
                body = event.body_as_str(encoding="UTF-8")
                self.arrivals.append((body, event.enqueued_time.timestamp(), received))
                for user, _slug, kind, due in changes_of(body):
                    self.seen[kind].append((user, due, received))

    def _on_error(self, _context, error):
        self.error = error

    def snapshot(self):
        with self._lock:
            return list(self.arrivals)

    def stop(self):
        self._client.close()
        self._thread.join(10)


def _tree_cpu_seconds(pid):
    """User + system CPU seconds of ``pid`` and its descendants so far (from /proc)."""
    return sum(cpu for cpu, _ in tree_stats(pid).values())


def _load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.prism_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, required=True, help="events published per second")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="length of the measured window (changes due in it count)")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds from the start before the window (the pipeline's start-up)")
    parser.add_argument("--max_tail", type=float, default=120.0,
                        help="how long to keep publishing after the window for its changes to "
                             "arrive before the run counts as not keeping up")
    parser.add_argument("--max_latency", type=float, default=10.0,
                        help="the enter latency p99 (s) up to which the rate counts as sustained")
    parser.add_argument("--users", type=int, default=5000, help="distinct users in the sample")
    parser.add_argument("--config", default=os.path.join(ROOT, "examples", "live.yaml"),
                        help="job config whose Event Hub work sends to ${%s}" % OUTPUT_VARIABLE)
    parser.add_argument("--max_read_seconds", type=float, default=1.0,
                        help="the source's max_read_seconds (transforms/eventhubs_source.py)")
    parser.add_argument("--workdir", default="/tmp/prism-latency",
                        help="the pipeline's output directory, its log and the summary JSON")
    args, pipeline_args = parser.parse_known_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.users <= 0:
        parser.error("--rate, --seconds and --users must be positive")
    from emulators.eventhubs import LocalEventHubs
    os.makedirs(args.workdir, exist_ok=True)
    log_path = os.path.join(args.workdir, "pipeline.log")
    spawn = multiprocessing.get_context("spawn")
    here, there = spawn.Pipe()
    server = spawn.Process(target=_serve_input, args=(there, PARTITIONS), daemon=True)
    server.start()
    input_cs = here.recv()
    destination = LocalEventHubs(hub=OUTPUT_HUB, partitions=PARTITIONS).start()
    reader = OutputReader(destination.connection_string).start()
    stopping, published = spawn.Event(), spawn.Value("q", 0)
    failure = spawn.Array("c", 256)
    uri = ("eventhubs://%s?connection_string_env=%s&mode=live&watermark_delay_seconds=%g"
           "&max_read_seconds=%g" % (INPUT_HUB, INPUT_VARIABLE, WATERMARK_DELAY_SECONDS,
                                     args.max_read_seconds))
    command = [sys.executable, "-m", "pipelines.stream", "--config", args.config, "--streaming",
               "--input", uri, "--output_dir", os.path.join(args.workdir, "out")] + pipeline_args
    env = dict(os.environ, **{INPUT_VARIABLE: input_cs,
                              OUTPUT_VARIABLE: destination.connection_string})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    load_before = _load()
    started = time.time()
    window_start = started + args.warmup
    window_end = window_start + args.seconds
    publisher = spawn.Process(target=_publish, args=(input_cs, args.rate, args.users, stopping,
                                                     published, failure), daemon=True)
    publisher.start()
    problem, published_at, passed = None, {}, False
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        cpu = {"pipeline_and_prism": 0.0}
        try:
            while True:
                now = time.time()
                for mark, at in (("window_start", window_start), ("window_end", window_end)):
                    if mark not in published_at and now >= at:
                        published_at[mark] = (published.value, now)
                if proc.poll() is not None:
                    problem = "the pipeline exited with status %d (see %s)" % (proc.returncode,
                                                                                log_path)
                    break
                if not publisher.is_alive():
                    problem = "the publisher stopped: %s" % failure.value.decode()
                    break
                cpu["pipeline_and_prism"] = _tree_cpu_seconds(proc.pid)
                if now >= window_end:
                    with reader._lock:
                        done = past_window(reader.seen, window_end)
                    if done or now >= window_end + args.max_tail:
                        passed = done
                        break
                time.sleep(0.5)
        finally:
            stopped = time.time()
            stopping.set()
            publisher.join(15)
            stop(proc)
    load_after = _load()
    time.sleep(1.0)   # the last deliveries in flight
    reader.stop()
    destination.stop()
    here.send("stop")
    enqueued = here.recv()
    server.join(10)
    arrivals = reader.snapshot()
    result = figures(enqueued, arrivals, window_start, window_end)
    with open(os.path.join(args.workdir, "arrivals.jsonl"), "w", encoding="utf-8") as fh:
        for body, arrived, received in arrivals:
            fh.write(json.dumps({"enqueued": arrived, "received": received,
                                 "message": json.loads(body)}) + "\n")
    in_window = None
    if "window_start" in published_at and "window_end" in published_at:
        (n0, t0), (n1, t1) = published_at["window_start"], published_at["window_end"]
        in_window = round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None
    summary = {
        "rate_asked": args.rate, "seconds": args.seconds, "warmup": args.warmup,
        "window": [_rfc(window_start), _rfc(window_end)],
        "published": published.value, "published_rate": in_window,
        "run_seconds": round(stopped - started, 1),
        "passed_window": passed, "tail_seconds": round(max(0.0, stopped - window_end), 1),
        "sustained": sustained(args.rate, in_window, passed, result["enter_latency_s"]["p99"],
                               args.max_latency),
        "cpu_s": {"pipeline_and_prism": round(cpu["pipeline_and_prism"], 1)},
        "load_avg_before": load_before, "load_avg_after": load_after,
        "cores": os.cpu_count(), "command": command[1:3] + ["..."] + pipeline_args,
        "problem": problem, "reader_error": repr(reader.error) if reader.error else None,
    }
    summary.update(result)
    with open(os.path.join(args.workdir, "prism_latency.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print_summary(summary)
    if problem:
        sys.stderr.write("error: %s\n" % problem)
        return 1
    return 0


def sustained(rate, published_rate, passed, enter_p99, max_latency):
    """Whether the pipeline kept up with ``rate``: the publisher reached 95% of it, the output
    passed the window, and 99% of the enters arrived within ``max_latency`` seconds of their
    cause (a pipeline that falls behind has latencies that grow with the backlog)."""
    return bool(published_rate is not None and published_rate >= 0.95 * rate and passed
                and enter_p99 is not None and enter_p99 <= max_latency)


def _fmt(value):
    return "-" if value is None else "%.2f" % value


def print_summary(summary, stream=sys.stdout):
    w = stream.write
    w("Prism live latency: %g events/s asked, %s published per second over the %g s window "
      "(%s .. %s)\n"
      % (summary["rate_asked"], summary["published_rate"], summary["seconds"],
         summary["window"][0], summary["window"][1]))
    w("  published %d, audience messages %d, pipeline + Prism CPU %.1f s, load %s -> %s\n"
      % (summary["published"], summary["messages"], summary["cpu_s"]["pipeline_and_prism"],
         summary["load_avg_before"], summary["load_avg_after"]))
    w("  the output %s (%.1f s of publishing after the window); enter latency p50 %s s in the "
      "window's first half, %s s in its second: the rate was %s\n"
      % ("passed the window" if summary["passed_window"] else
         "had NOT passed the window by --max_tail", summary["tail_seconds"],
         _fmt(summary["enter_latency_p50_by_half_s"][0]),
         _fmt(summary["enter_latency_p50_by_half_s"][1]),
         "sustained" if summary["sustained"] else "NOT sustained"))
    for label, key in (
            ("enter latency (cause enqueued -> output enqueue)", "enter_latency_s"),
            ("enter latency (cause enqueued -> receipt)", "enter_latency_at_receipt_s"),
            ("exit on an event (cause enqueued -> output enqueue)", "exit_latency_s"),
            ("delayed exit lateness (due -> output enqueue)", "delayed_exit_lateness_s"),
            ("delayed exit lateness (due -> receipt)", "delayed_exit_lateness_at_receipt_s"),
            ("delayed enter lateness (due -> output enqueue)", "delayed_enter_lateness_s")):
        s = summary[key]
        if s["count"]:
            early = (", %d before due" % s["early"]) if "early" in s else ""
            w("  %-52s p50 %6.2f s  p99 %6.2f s  max %6.2f s  (%d%s)\n"
              % (label, s["p50"], s["p99"], s["max"], s["count"], early))
        else:
            w("  %-52s none arrived\n" % label)

if __name__ == "__main__":
    sys.exit(main())
