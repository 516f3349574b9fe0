"""A live stream on Prism: timers fire while input keeps flowing.

``python -m pipelines.stream --streaming --input eventhubs://in?...&mode=live`` with no ``--runner``
(so on Prism, pipelines/runners.py) reads the input hub of a local Event Hubs endpoint while this
test keeps publishing to it, sends audience messages to an output hub of another local endpoint and
exports the events to Azurite. The test waits on the destinations (the output hub, the container)
for:

* a delayed exit: one purchase puts ``buyer`` in "purchased in the last 10 s"; with no further
  event of that user, the exit is sent once the watermark passes the purchase time + 10 s;
* a Blob window close: the export's windows are anchored a few seconds after the test starts, so
  the first window ends while events flow, and its file is written once the watermark passes its
  end + ``--blob_grace_seconds``.

Both must arrive while the publisher is still running and after it has published events later
than the exit's due time and the window's end (the input goes on, it does not end). Every wait is
on a destination and bounded by the test's timeout, never a wall-time assertion.
"""
import datetime
import json
import os
import re
import subprocess
import threading
import time

import pytest

from emulators.eventhubs import LocalEventHubs
from pipelines import runners
from tests.commands import PY, ROOT, interrupt


CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: a-recent, slug: recent_buyers, condition: {event: purchase, within: 10s}}
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${OUT_CS}"}
  - id: w-blob
    workflow: azure_blob_event_export
    config:
      connection_string: "${AZ_CS}"
      container: live
      prefix: ev/
      export_type: events
      period_hours: 1
      anchor: "%(anchor)s"
      format: csv
"""


def _rfc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Publisher(threading.Thread):
    """Publishes events with the current time to a hub, about ``rate`` per second, until stopped:
    first one purchase of ``buyer``, then page views of other users."""

    def __init__(self, connection_string, rate=20):
        super().__init__(daemon=True)
        self._connection_string = connection_string
        self._interval = 1.0 / rate
        self.stopping = threading.Event()
        self.latest_ts = None      # the ts of the last event published
        self.published = 0
        self.error = None

    def run(self):
        from azure.eventhub import EventData, EventHubProducerClient
        try:
            producer = EventHubProducerClient.from_connection_string(
                self._connection_string, retry_total=2)
            with producer:
                while not self.stopping.is_set():
                    now = time.time()
                    n = self.published
                    event = ({"event_id": "p-0", "user_id": "buyer", "event": "purchase",
                              "ts": _rfc(now), "properties": {"price": 12.5}} if n == 0 else
                             {"event_id": "v-%d" % n, "user_id": "visitor-%d" % (n % 40),
                              "event": "page_view", "ts": _rfc(now)})
                    batch = producer.create_batch(partition_key=event["user_id"])
                    batch.add(EventData(json.dumps(event)))
                    producer.send_batch(batch)
                    self.published, self.latest_ts = n + 1, now
                    self.stopping.wait(self._interval)
        except Exception as exc:  # reported by the test, which would otherwise wait forever
            self.error = exc


def prism_children(pid):
    """Process ids of the Prism binaries that process ``pid`` started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="utf-8") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                command = fh.read().split(b"\0")[0].decode("utf-8", "replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and os.path.basename(command) == "prism":
            found.append(int(entry))
    return found


def _wait_for(what, found, proc, publisher):
    """Polls ``found()`` until it returns something; fails at once if the pipeline or the
    publisher stops (the test's timeout bounds the wait)."""
    while True:
        result = found()
        if result:
            return result
        if proc.poll() is not None:
            pytest.fail("the pipeline exited (%s) before %s arrived:\n%s" % (
                proc.returncode, what, proc.stderr.read()[-4000:]))
        if publisher.error is not None or not publisher.is_alive():
            pytest.fail("the publisher stopped before %s arrived: %r" % (what, publisher.error))
        time.sleep(0.25)


def _running(pid):
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_on_prism_a_delayed_exit_and_a_blob_window_close_arrive_while_input_flows(
        tmp_path, azurite):
    if not os.access(runners.prism_binary(), os.X_OK):
        pytest.fail("Prism is not installed: run %s" % runners.INSTALL_PRISM, pytrace=False)
    from azure.storage.blob import BlobServiceClient
    # The first export window ends 25 s from now: while the publisher is still publishing.
    anchor = int(time.time()) + 25
    (tmp_path / "config.yaml").write_text(CONFIG % {"anchor": _rfc(anchor)})
    window_file = re.compile(r"^ev/acme_events_w-blob_%d_%d\.csv$" % (anchor - 3600, anchor))
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string).get_container_client("live")
    with LocalEventHubs(hub="in", partitions=2) as source, \
            LocalEventHubs(hub="out", partitions=2) as destination:
        publisher = Publisher(source.connection_string)
        publisher.start()
        env = dict(os.environ, PYTHONPATH=ROOT, IN_CS=source.connection_string,
                   OUT_CS=destination.connection_string, AZ_CS=azurite.connection_string)
        proc = subprocess.Popen(
            [PY, "-m", "pipelines.stream", "--config", str(tmp_path / "config.yaml"),
             "--streaming", "--output_dir", str(tmp_path / "out"), "--blob_grace_seconds", "2",
             "--input", "eventhubs://in?connection_string_env=IN_CS&mode=live"
                        "&watermark_delay_seconds=2"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def buyer_messages():
                messages = [json.loads(e.body) for e in destination.events()]
                return [m for m in messages if m["data"]["user_id"] == "buyer"]

            def exit_message():
                return [m for m in buyer_messages()
                        if m["data"]["segment_events"][0]["event"] == "exit"]

            exit_ = _wait_for("the delayed exit", exit_message, proc, publisher)[0]
            prism = prism_children(proc.pid)
            flowing_at_exit = publisher.is_alive() and not publisher.stopping.is_set()
            published_at_exit, latest_at_exit = publisher.published, publisher.latest_ts

            def window_blob():
                return [b.name for b in container.list_blobs(name_starts_with="ev/")
                        if window_file.match(b.name)]

            name = _wait_for("the Blob window's file", window_blob, proc, publisher)[0]
            flowing_at_close = publisher.is_alive() and not publisher.stopping.is_set()
            latest_at_close = publisher.latest_ts
            rows = container.download_blob(name).readall().decode("utf-8").splitlines()
        finally:
            publisher.stopping.set()
            publisher.join(10)
            # SIGINT: the command ends as on Ctrl-C, and Beam stops the Prism process it started.
            _, stderr = interrupt(proc)
    assert "live input: running on PrismRunner" in stderr
    # It ran on the project's Prism, which ended with the command (Ctrl-C).
    # An ended process may stay a zombie until the init process reaps it: count the running ones,
    # polling (bounded) for the reaping to catch up.
    assert prism
    for _ in range(100):
        if not [p for p in prism if _running(p)]:
            break
        time.sleep(0.1)
    assert not [p for p in prism if _running(p)]
    segment = exit_["data"]["segment_events"][0]
    entered = [m for m in buyer_messages() if m["data"]["segment_events"][0]["event"] == "enter"]
    assert len(entered) == 1 and segment["slug"] == "recent_buyers"
    # The exit is due 10 s after the purchase; events after that time were already flowing in,
    # and the input went on: the exit came from the watermark, not from the end of the input.
    assert _seconds(segment["exit"]) - _seconds(segment["enter"]) == pytest.approx(10, abs=0.001)
    assert flowing_at_exit and latest_at_exit > _seconds(segment["exit"])
    assert publisher.published > published_at_exit
    # The window's file: written while events went on, holding the purchase row and page views
    # received before the window's end (and none after it).
    assert flowing_at_close and latest_at_close > anchor
    assert rows[0].split(",")[:2] and any("p-0" in row for row in rows[1:])
    assert len(rows) > 2
