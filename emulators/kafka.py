"""A single-node Kafka broker on loopback, started from the jars that install_runners.sh fetched.

``scripts/install_runners.sh kafka`` puts the broker's and its command-line tools' jars (Maven
artifacts ``org.apache.kafka:kafka_2.13`` and ``kafka-tools``) in ``.tools/kafka/<version>/libs``
(or under ``CDP_TOOLS_DIR``). :class:`LocalKafka` formats a fresh log directory in KRaft mode
(``kafka.tools.StorageTool format``), starts ``kafka.Kafka`` as broker and controller in one JVM,
with a plaintext listener and a controller listener on free loopback ports, and runs the tools
for what a test needs: creating a topic (``TopicCommand``), publishing lines
(``ConsoleProducer``, one record per line, no key, the partitions taken in turn) and reading the
topic's end offsets (``GetOffsetShell``). Each tool is a JVM of its own, so each call takes a second or two.

Usage in tests::

    with LocalKafka() as kafka:
        kafka.create_topic("events", partitions=2)
        kafka.produce("events", lines)
        assert sum(kafka.end_offsets("events").values()) == len(lines)
        uri = "kafka://%s/events?max_num_records=%d" % (kafka.bootstrap, len(lines))

From a shell (runs until Ctrl-C; publishes a JSON Lines file first if given)::

    python -m emulators.kafka [--port 9092] [--topic events --partitions 2] [--publish FILE]

It has no authentication and binds to 127.0.0.1 only: never expose it to a network.
"""
import argparse
import base64
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from pipelines.runners import end_process_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The broker version that install_runners.sh installs unless KAFKA_VERSION says otherwise.
KAFKA_VERSION = "4.4.0"
#: How long the broker may take to accept connections after its JVM starts.
START_SECONDS = 90
#: The broker's heap: a test broker holds a few topics of a few thousand records.
BROKER_HEAP = "-Xmx512m"
TOOL_HEAP = "-Xmx256m"
INSTALL = "scripts/install_runners.sh kafka"


class KafkaError(RuntimeError):
    """The broker is not installed, did not start, or a tool failed (the message says which)."""


def kafka_libs(version: str = None) -> str:
    """The directory of the broker's jars for ``version`` (``KAFKA_VERSION`` in the environment,
    else :data:`KAFKA_VERSION`)."""
    tools = os.environ.get("CDP_TOOLS_DIR") or os.path.join(ROOT, ".tools")
    version = version or os.environ.get("KAFKA_VERSION") or KAFKA_VERSION
    return os.path.join(tools, "kafka", version, "libs")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalKafka:
    """A KRaft broker+controller on 127.0.0.1 in a temporary directory, stopped and removed on
    exit. ``port`` 0 picks a free port. ``bootstrap`` is ``127.0.0.1:<port>``."""

    def __init__(self, port: int = 0, libs: str = None, workdir: str = None):
        self.libs = libs or kafka_libs()
        if not glob.glob(os.path.join(self.libs, "kafka_2.13-*.jar")):
            raise KafkaError("the Kafka broker is not installed (%s has no kafka_2.13 jar): run %s"
                             % (self.libs, INSTALL))
        self.port = port or _free_port()
        self.controller_port = _free_port()
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="kafka-")
        self.log_path = os.path.join(self.workdir, "broker.log")
        self._proc = None

    @property
    def bootstrap(self) -> str:
        return "127.0.0.1:%d" % self.port

    def _java(self, main, *args, heap=TOOL_HEAP, log_level="warn"):
        return ["java", heap, "-Dorg.slf4j.simpleLogger.defaultLogLevel=" + log_level,
                "-cp", os.path.join(self.libs, "*"), main] + list(args)

    def _tool(self, main, *args, stdin=None, timeout=120):
        proc = subprocess.run(self._java(main, *args), input=stdin, capture_output=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise KafkaError("%s %s exited %d: %s" % (
                main.rsplit(".", 1)[-1], " ".join(args[:4]), proc.returncode,
                proc.stderr.decode("utf-8", "replace")[-2000:]))
        return proc.stdout.decode("utf-8", "replace")

    def start(self) -> "LocalKafka":
        config = os.path.join(self.workdir, "server.properties")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write("\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                "controller.quorum.voters=1@127.0.0.1:%d" % self.controller_port,
                "listeners=PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d"
                % (self.port, self.controller_port),
                "advertised.listeners=PLAINTEXT://127.0.0.1:%d" % self.port,
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "log.dirs=%s" % os.path.join(self.workdir, "data"),
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                ""]))
        # A cluster id is 16 random bytes in URL-safe base64 without padding.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        self._tool("kafka.tools.StorageTool", "format", "--config", config,
                   "--cluster-id", cluster_id)
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            self._java("kafka.Kafka", config, heap=BROKER_HEAP, log_level="info"),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self._proc.poll() is not None:
                raise KafkaError("the Kafka broker exited at start (%d): %s"
                                 % (self._proc.returncode, self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise KafkaError("the Kafka broker did not listen on %s within %d s: %s"
                                     % (self.bootstrap, START_SECONDS, self.log_tail()))
                time.sleep(0.2)

    def log_tail(self, chars=3000) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-chars:].strip()
        except OSError:
            return ""

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        self._tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", self.bootstrap,
                   "--create", "--topic", topic, "--partitions", str(partitions),
                   "--replication-factor", "1")

    def produce(self, topic: str, lines) -> None:
        """Publishes each line (text without a line break) as one record with no key, to the
        topic's partitions in turn; returns when the broker has acknowledged all of them (the
        producer's ``acks=all``)."""
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        self._tool("org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", self.bootstrap,
                   "--topic", topic, "--command-property", "acks=all",
                   "--command-property",
                   "partitioner.class=org.apache.kafka.clients.producer.RoundRobinPartitioner",
                   "--command-property", "linger.ms=5", stdin=data)

    def end_offsets(self, topic: str) -> dict:
        """``{partition: end offset}`` of ``topic`` (the number of records each holds)."""
        out = self._tool("org.apache.kafka.tools.GetOffsetShell", "--bootstrap-server",
                         self.bootstrap, "--topic", topic)
        offsets = {}
        for line in out.splitlines():
            name, partition, offset = line.strip().rsplit(":", 2)
            if name == topic:
                offsets[int(partition)] = int(offset)
        return offsets

    def stop(self) -> None:
        """Stops the broker (SIGTERM, then SIGKILL) and removes its directory if it made it."""
        if self._proc is not None:
            end_process_group(self._proc, term_grace=30)
        if self._proc is not None:
            self._log.close()
            self._proc = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalKafka":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.kafka",
        description="A single-node Kafka broker on 127.0.0.1 (from %s) until Ctrl-C." % INSTALL)
    parser.add_argument("--port", type=int, default=9092, help="broker port (0: a free one)")
    parser.add_argument("--topic", default="events", help="topic to create (default events)")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--publish", metavar="FILE",
                        help="publish each line of FILE (JSON Lines) to the topic")
    args = parser.parse_args(argv)
    try:
        kafka = LocalKafka(port=args.port).start()
    except KafkaError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 1
    try:
        kafka.create_topic(args.topic, args.partitions)
        if args.publish:
            with open(args.publish, encoding="utf-8") as fh:
                kafka.produce(args.topic, [line.rstrip("\n") for line in fh if line.strip()])
        sys.stdout.write("kafka broker on %s, topic %s (%d partition(s)), records: %d\n"
                         % (kafka.bootstrap, args.topic, args.partitions,
                            sum(kafka.end_offsets(args.topic).values())))
        sys.stdout.write("input: kafka://%s/%s\n" % (kafka.bootstrap, args.topic))
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except KafkaError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 1
    finally:
        kafka.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
