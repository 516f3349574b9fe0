"""Which Beam runner a pipeline command runs on, and where it finds the runners the project installs.

* A live (unbounded) input with no ``--runner`` runs on Prism, Beam's local portable runner, which
  follows the source's watermark: delayed exits, Blob window closes and the 24 h dedupe happen
  while input still flows. Any other input with no ``--runner`` stays on Beam's default.
* On Prism, ``--job_server_timeout`` is ten years unless given: Beam 2.62 uses it as the deadline
  of the job's state and message streams, so its default (60 s) ends any run after a minute.
* Prism is the binary ``scripts/install_runners.sh prism`` builds from Beam's Go module at the
  installed apache-beam's version, in ``.tools/prism/v<version>/prism``. When Prism is the runner
  and ``--prism_location`` is not given, that binary is passed as ``--prism_location``; when it is
  missing, the run stops with one line saying how to install it (Beam would otherwise try to
  download a release binary from GitHub at run time).
* Flink: with ``--runner=FlinkRunner`` the commands point Beam at the Flink job server that
  ``scripts/install_runners.sh flink`` assembles under ``.tools/flink/<version>/`` (Beam would
  download its own jar), and on the embedded Flink (``--flink_master`` ``[auto]``, the default,
  or ``[local]``) run one Flink slot per core (``--parallelism``) and the Python work in Beam's
  worker pool (``--environment_type=EXTERNAL``), one SDK worker process per slot; Beam's own
  default there is LOOPBACK, every bundle in the launching process. A user's option always wins.

No Beam import at module level: the launcher reads this before building a pipeline.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:  # at run time Beam is imported where it is used
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.external import JavaJarExpansionService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRISM_RUNNER = "PrismRunner"
INSTALL_PRISM = "scripts/install_runners.sh prism"
INSTALL_FLINK = "scripts/install_runners.sh flink"
#: ``--job_server_timeout`` on Prism unless given: the job's streams last as long as the job
#: (ten years, in seconds).
PRISM_JOB_SERVER_TIMEOUT = 10 * 365 * 24 * 3600


class RunnerMissingError(RuntimeError):
    """A runner the run needs is not installed; the message says how to install it."""


def beam_version() -> str:
    from apache_beam.version import __version__
    return __version__


def prism_binary(version: Optional[str] = None, root: str = ROOT) -> str:
    """Where ``scripts/install_runners.sh prism`` puts Prism for apache-beam ``version``."""
    return os.path.join(root, ".tools", "prism", "v" + (version or beam_version()), "prism")


#: Runner names (lower case, without "runner": :func:`runner_name`) that run the whole pipeline
#: in the launching process: Beam's DirectRunner and what it picks.
DIRECT_RUNNERS = ("", "direct", "switchingdirect", "fnapi")


def runner_name(runner: Any) -> str:
    """``--runner``'s value (a name, a dotted path or a runner object; None: Beam's default) in
    lower case without "runner", e.g. ``direct`` for ``DirectRunner``."""
    name = (runner if isinstance(runner, str) else type(runner).__name__ if runner else "")
    return name.lower().rsplit(".", 1)[-1].replace("runner", "")


def is_prism(runner: Any) -> bool:
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
    return name.lower().rsplit(".", 1)[-1] in ("prismrunner", "prism")


def choose_runner(options: "PipelineOptions", live: bool,
                  binary: Optional[str] = None) -> Optional[str]:
    """Sets the runner of ``options`` (Beam ``PipelineOptions``) for this run and returns its name.

    ``live``: the input is unbounded. Raises :class:`RunnerMissingError` when Prism is the runner,
    no ``--prism_location`` is given and the project's Prism binary is not installed.
    """
    from apache_beam.options.pipeline_options import PrismRunnerOptions, StandardOptions
    standard = options.view_as(StandardOptions)
    if standard.runner is None and live:
        standard.runner = PRISM_RUNNER
    if is_prism(standard.runner):
        from apache_beam.options.pipeline_options import PortableOptions
        if "job_server_timeout" not in options.get_all_options(drop_default=True):
            # Beam 2.62 opens the job's state and message streams with this timeout as their
            # deadline: with its default (60 s) every Prism run longer than a minute, live or
            # not, fails with DEADLINE_EXCEEDED.
            options.view_as(PortableOptions).job_server_timeout = PRISM_JOB_SERVER_TIMEOUT
        prism = options.view_as(PrismRunnerOptions)
        if not prism.prism_location:
            binary = binary or prism_binary()
            if not os.access(binary, os.X_OK):
                raise RunnerMissingError(
                    "Prism %s is not installed (%s missing): run %s, or name another runner "
                    "with --runner" % ("v" + beam_version(), os.path.relpath(binary, ROOT),
                                       INSTALL_PRISM))
            prism.prism_location = binary
    runner = standard.runner
    return runner if isinstance(runner, str) or runner is None else type(runner).__name__


# -- Flink -------------------------------------------------------------------------------------

#: The Flink version of the job server that install_runners.sh assembles (its FLINK_MINOR).
FLINK_MINOR = "1.19"
#: Flink's magic masters: an embedded Flink inside the job server's JVM.
LOCAL_FLINK_MASTERS = ("[auto]", "[local]")
#: How long an SDK environment outlives its last use inside a job (Beam's default, 0, starts
#: new worker processes for each stage that Flink's batch execution runs one after another).
ENVIRONMENT_CACHE_MILLIS = 10 * 60 * 1000
#: How long the worker pool may take to listen.
POOL_START_SECONDS = 60
#: The pool's environment variable naming the process that started it.
_PARENT_ENV = "CDP_WORKER_POOL_PARENT"
_PR_SET_PDEATHSIG = 1


def tools_dir() -> str:
    """Where the commands look for what install_runners.sh installs: ``<repo>/.tools``, or
    ``CDP_TOOLS_DIR`` (tests; an install moved elsewhere)."""
    return os.environ.get("CDP_TOOLS_DIR") or os.path.join(ROOT, ".tools")


def flink_job_server_jar(version: Optional[str] = None, flink_minor: str = FLINK_MINOR) -> str:
    """The path install_runners.sh gives the Flink job server of apache-beam ``version``."""
    version = version or beam_version()
    return os.path.join(tools_dir(), "flink", version,
                        "beam-runners-flink-%s-job-server-%s.jar" % (flink_minor, version))


def flink_expansion_service_jar(version: Optional[str] = None) -> str:
    """The path install_runners.sh gives Beam's Java expansion service (with KafkaIO), beside the
    Flink job server of apache-beam ``version`` and on the same ``lib/``."""
    version = version or beam_version()
    return os.path.join(tools_dir(), "flink", version, "beam-expansion-service-%s.jar" % version)


def kafka_expansion_service(options: "PipelineOptions") -> Optional["JavaJarExpansionService"]:
    """The expansion service of a ``kafka://`` input's ReadFromKafka on this run's runner.

    On the embedded Flink with the project's job server (``--runner=FlinkRunner``, no
    ``--flink_master`` or ``[auto]``/``[local]``, no ``--flink_job_server_jar``): Beam's Java
    expansion service that install_runners.sh puts beside the job server, on the same ``lib/``
    (KafkaIO and kafka-clients included), started by Beam for the expansion only. It gives the
    Kafka read an EMBEDDED Java environment: the Flink job server runs Beam's Java SDK harness in
    its own JVM, with no Docker and no Java worker process. Anywhere else, None: Beam's default
    (its expansion-service jar from Maven, a Docker Java environment), for a Flink cluster or
    Dataflow, unless the URI names a service (``expansion_service=HOST:PORT``).

    Raises RunnerMissingError when that expansion service is not installed.
    """
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, StandardOptions
    if not is_flink(options.view_as(StandardOptions).runner):
        return None
    flink = options.view_as(FlinkRunnerOptions)
    if flink.flink_job_server_jar or (flink.flink_master or "[auto]").strip() not in \
            LOCAL_FLINK_MASTERS:
        return None
    jar = flink_expansion_service_jar()
    if not os.path.exists(jar):
        raise RunnerMissingError(
            "Beam's Java expansion service for the kafka:// input is not installed (%s): run %s"
            % (jar, INSTALL_FLINK))
    from apache_beam.transforms.external import JavaJarExpansionService
    return JavaJarExpansionService(jar, append_args=["--defaultEnvironmentType=EMBEDDED"])


def is_flink(runner: Any) -> bool:
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
    return name.rsplit(".", 1)[-1].lower() in ("flinkrunner", "flink")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerPool:
    """Beam's Python worker pool in a process of its own: the runner asks it for SDK workers, and
    it starts each as a child process. The children run ``python`` from PATH, so this
    interpreter's directory goes first on the pool's PATH (its apache-beam and this project).
    The pool and its workers end with this process, however it ends (see :func:`_pool_main`)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="beam-worker-pool-", suffix=".log",
                                                delete=False)
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        if ROOT not in env.get("PYTHONPATH", "").split(os.pathsep):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        env[_PARENT_ENV] = str(os.getpid())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.runners", "--service_port=%d" % self.port],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)  # its own process group: stop() ends the workers with it
        deadline = time.monotonic() + POOL_START_SECONDS
        while True:
            if self._proc.poll() is not None:
                raise RunnerMissingError("Beam's Python worker pool exited at start (%d): %s"
                                       % (self._proc.returncode, self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RunnerMissingError("Beam's Python worker pool did not listen on port %d "
                                           "within %d s" % (self.port, POOL_START_SECONDS))
                time.sleep(0.2)

    @property
    def address(self) -> str:
        return "localhost:%d" % self.port

    @property
    def log_path(self) -> str:
        return self._log.name

    def log_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        with open(self._log.name, encoding="utf-8", errors="replace") as fh:
            return fh.read()[-chars:].strip()

    def stop(self, keep_log: bool = False) -> None:
        """Ends the pool and the workers it started (its process group)."""
        end_process_group(self._proc, term_grace=10)
        try:  # workers of the group that outlive the pool's own process
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        if not keep_log:
            os.unlink(self._log.name)


def end_process_group(proc: "subprocess.Popen", term_grace: float) -> None:
    """Ends ``proc``'s process group (``proc`` started with ``start_new_session=True``): SIGTERM,
    up to ``term_grace`` seconds for ``proc`` to exit, then SIGKILL and up to 10 s more."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, term_grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


#: The file Flink writes last into a checkpoint's or savepoint's directory: it is complete then.
_CHECKPOINT_METADATA = "_metadata"


def _local_directory(uri):
    """The local path of ``uri`` (a path or a ``file://`` URI); None for another file system."""
    if uri.startswith("file://"):
        return uri[len("file://"):] or "/"
    return None if "://" in uri else uri


def latest_flink_checkpoint(storage_path: str) -> Optional[str]:
    """The newest complete checkpoint under a ``--state_backend_storage_path`` on a local disk.

    Flink writes a job's checkpoints to ``<storage path>/<job id>/chk-<n>/``, the ``_metadata``
    file last; with retained (externalized) checkpoints the newest complete one stays after the
    job ends, however it ends. Returns that ``chk-<n>`` directory, the newest by its
    ``_metadata``'s time over every job folder (a restored job writes to a folder of its own),
    for ``--savepoint_path``; None when there is none.
    """
    top = _local_directory(storage_path)
    if top is None:
        raise ValueError("%s: only a local directory (a path or file://) can be searched"
                         % storage_path)
    found = []
    for job in (os.listdir(top) if os.path.isdir(top) else ()):
        folder = os.path.join(top, job)
        for name in (os.listdir(folder) if os.path.isdir(folder) else ()):
            metadata = os.path.join(folder, name, _CHECKPOINT_METADATA)
            if name.startswith("chk-") and name[4:].isdigit():
                try:
                    found.append((os.stat(metadata).st_mtime_ns, int(name[4:]),
                                  os.path.dirname(metadata)))
                except OSError:
                    continue           # in progress (no _metadata yet), or just discarded
    return max(found)[2] if found else None


class FlinkRestoreError(RunnerMissingError):
    """``--savepoint_path`` names no savepoint or checkpoint that Flink could start from."""


def _check_restore_path(path):
    """Refuses a local ``--savepoint_path`` without Flink's ``_metadata`` before Beam starts the
    job server (Flink would fail the job after submitting it, deep in its log)."""
    local = _local_directory(path)
    if local is None:
        return
    if os.path.isfile(local) and os.path.basename(local) == _CHECKPOINT_METADATA:
        return
    if not os.path.isfile(os.path.join(local, _CHECKPOINT_METADATA)):
        raise FlinkRestoreError(
            "--savepoint_path %s: no savepoint or complete checkpoint there (no %s file); "
            "name a chk-N or savepoint-... directory" % (path, _CHECKPOINT_METADATA))


#: The JVM flag the embedded Flink needs on Java 17 (``apply_flink_defaults``).
OPEN_JAVA_UTIL = "--add-opens=java.base/java.util=ALL-UNNAMED"


def apply_flink_defaults(options: "PipelineOptions") -> bool:
    """Fills in the Flink options the user left out; True when a worker pool is needed.

    Raises RunnerMissingError when the job server is not installed.
    """
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions
    given = options.get_all_options(drop_default=True)
    if given.get("savepoint_path"):
        _check_restore_path(given["savepoint_path"])
    flink = options.view_as(FlinkRunnerOptions)
    portable = options.view_as(PortableOptions)
    if given.get("checkpointing_interval") and "finish_bundle_before_checkpointing" not in given:
        # Beam's Flink operators keep what a step emitted in an unfinished bundle inside the
        # checkpoint and let it go only with the step's next element or watermark. The step
        # after the read's Impulse (PlanPartitions) never gets another one: its partitions stayed
        # in the checkpoint, no partition was ever read, and the checkpoints stalled.
        from pipelines.options import FlinkCheckpointOptions
        options.view_as(FlinkCheckpointOptions).finish_bundle_before_checkpointing = True
    if not flink.flink_job_server_jar:
        jar = flink_job_server_jar()
        if not os.path.exists(jar):
            raise RunnerMissingError(
                "the Flink job server for apache-beam %s is not installed (%s): run "
                "%s, or give --flink_job_server_jar" % (beam_version(), jar, INSTALL_FLINK))
        flink.flink_job_server_jar = jar
    if (flink.flink_master or "[auto]").strip() not in LOCAL_FLINK_MASTERS:
        return False  # a Flink cluster: its own slots and SDK environment (Beam's defaults)
    from apache_beam.options.pipeline_options import JobServerOptions
    jvm = options.view_as(JobServerOptions)
    if not any(p.startswith("--add-opens=java.base/java.util=") for p in jvm.job_server_jvm_properties):
        # The embedded Flink runs inside the job server's JVM. On Java 17 its streaming mode
        # serialises a java.util.Arrays$ArrayList by reflection and the job failed at once
        # ("module java.base does not opens java.util"); Flink's own launcher opens java.util
        # (env.java.opts.all) for the same reason.
        jvm.job_server_jvm_properties = list(jvm.job_server_jvm_properties) + [OPEN_JAVA_UTIL]
    cores = os.cpu_count() or 1
    if "parallelism" not in given:
        flink.parallelism = cores
    if portable.environment_type or portable.output_executable_path:
        return False
    portable.environment_type = "EXTERNAL"
    if "sdk_worker_parallelism" not in given:
        portable.sdk_worker_parallelism = max(1, flink.parallelism if flink.parallelism > 0
                                              else cores)
    if "environment_cache_millis" not in given:
        portable.environment_cache_millis = ENVIRONMENT_CACHE_MILLIS
    return True


#: Flink's configuration files in a configuration directory: the 1.19+ YAML file, then the legacy.
_FLINK_CONFIG_FILES = ("config.yaml", "flink-conf.yaml")


@contextlib.contextmanager
def local_flink_restore(options: "PipelineOptions") -> Iterator[Optional[str]]:
    """Makes an embedded Flink start the job from ``--savepoint_path``, until the block ends.

    Beam 2.62's job server applies ``--savepoint_path`` only when it submits to a Flink cluster
    (``FlinkExecutionEnvironments`` passes it to the remote environment alone); the embedded
    Flink of ``--flink_master`` ``[auto]``/``[local]`` ignores it and starts from nothing. That
    Flink does read the configuration directory of ``--flink_conf_dir``, and Flink's own
    ``execution.savepoint.path`` there restores the job. So, for a local master with a savepoint
    path, this writes a configuration directory holding that key (and
    ``execution.savepoint.ignore-unclaimed-state`` from ``--allow_non_restored_state``), after a
    copy of the user's ``--flink_conf_dir`` files if one is given, and points
    ``--flink_conf_dir`` at it; the directory is removed when the block ends.
    """
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    from pipelines.options import FlinkCheckpointOptions
    given = options.get_all_options(drop_default=True)
    path = given.get("savepoint_path")
    master = (options.view_as(FlinkRunnerOptions).flink_master or "[auto]").strip()
    if not path or master not in LOCAL_FLINK_MASTERS:
        yield None
        return
    if "\n" in path or ": " in path:
        raise FlinkRestoreError("--savepoint_path %r: a path with a line break or ': ' cannot "
                                "be written into Flink's configuration" % path)
    directory = tempfile.mkdtemp(prefix="flink-conf-")
    try:
        base = given.get("flink_conf_dir")
        target = os.path.join(directory, _FLINK_CONFIG_FILES[1])
        if base:
            for name in os.listdir(base):
                source = os.path.join(base, name)
                if os.path.isfile(source):
                    with open(source, "rb") as src, \
                            open(os.path.join(directory, name), "wb") as dst:
                        dst.write(src.read())
            present = [n for n in _FLINK_CONFIG_FILES if os.path.exists(os.path.join(directory, n))]
            if present:
                target = os.path.join(directory, present[0])
        with open(target, "a", encoding="utf-8") as fh:
            fh.write("\nexecution.savepoint.path: %s\n" % path)
            fh.write("execution.savepoint.ignore-unclaimed-state: %s\n"
                     % ("true" if given.get("allow_non_restored_state") else "false"))
        options.view_as(FlinkCheckpointOptions).flink_conf_dir = directory
        sys.stderr.write("flink: starting from %s\n" % path)
        yield directory
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


@contextlib.contextmanager
def runner_environment(options: "PipelineOptions") -> Iterator[None]:
    """Applies the runner's defaults to ``options`` and runs what the runner needs beside the
    pipeline (Flink: Beam's worker pool; a restore's configuration) until the block ends."""
    from apache_beam.options.pipeline_options import StandardOptions
    if not is_flink(options.view_as(StandardOptions).runner):
        yield
        return
    pool_needed = apply_flink_defaults(options)
    interrupt_stops_the_job_server()
    with local_flink_restore(options):
        if pool_needed:
            with _worker_pool(options):
                yield
        else:
            yield


@contextlib.contextmanager
def _worker_pool(options):
    from apache_beam.options.pipeline_options import PortableOptions
    pool = WorkerPool()
    options.view_as(PortableOptions).environment_config = pool.address
    failed = False
    # SIGTERM's default ends this process at once: Beam's job server (a java child that Beam
    # stops at exit) would outlive it. As an exception, it unwinds and exits like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.stop(keep_log=failed)
        if failed:
            sys.stderr.write("Python workers' log: %s\n" % pool.log_path)


def interrupt_stops_the_job_server() -> bool:
    """Makes Ctrl-C stop Beam's Flink job server and end the command as an interrupt.

    Beam 2.62 installs the job server's ``stop`` as the SIGINT handler when it starts the server,
    but ``stop`` takes no signal arguments: Ctrl-C raised a TypeError there, before anything was
    stopped. Wrapped, the handler stops the server (its Flink and the job with it) and raises
    KeyboardInterrupt, which the commands report as ``interrupted``. Called directly (at exit),
    it stops as before. Nothing is patched if Beam's class is not as expected.
    """
    try:
        from apache_beam.runners.portability.job_server import StopOnExitJobServer
    except ImportError:
        return False
    stop = StopOnExitJobServer.stop
    if getattr(stop, "_interrupt_aware", False):
        return True

    def stop_then_interrupt(self, *signal_arguments):
        stop(self)
        if signal_arguments:
            raise KeyboardInterrupt("signal %s" % signal_arguments[0])

    stop_then_interrupt._interrupt_aware = True
    StopOnExitJobServer.stop = stop_then_interrupt
    return True


def _terminated(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def _pool_main(argv):
    """Runs Beam's worker pool (``worker_pool_main``) so that it and the workers it starts end
    when the process that started it ends, even by SIGKILL: on Linux the kernel sends the pool
    SIGTERM then (``PR_SET_PDEATHSIG``), and SIGTERM ends the pool's process group, its workers
    included. Elsewhere the starting process's :meth:`WorkerPool.stop` is the only cleanup."""
    def end(*_):
        if os.getpgid(0) == os.getpid():  # the group WorkerPool made for it: the pool and workers
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(143)
    signal.signal(signal.SIGTERM, end)
    parent = int(os.environ.get(_PARENT_ENV) or 0)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:
        return  # the starting process ended before the signal was armed
    from apache_beam.runners.worker import worker_pool_main
    worker_pool_main.main(argv)


if __name__ == "__main__":
    _pool_main(sys.argv)
