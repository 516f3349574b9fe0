"""pipelines/runners.py: the options ``--runner=FlinkRunner`` alone gets, and Beam's worker pool
that the commands start beside a Flink job (no Flink is started here; tests/test_flink_runner.py
runs the pipelines on it)."""
import os
import signal
import subprocess
import sys
import time

import apache_beam
import pytest
from apache_beam.options.pipeline_options import (FlinkRunnerOptions, JobServerOptions, PipelineOptions,
                                                  PortableOptions)

from pipelines import runners

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tools(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_TOOLS_DIR", str(tmp_path))
    jar = runners.flink_job_server_jar()
    os.makedirs(os.path.dirname(jar))
    open(jar, "wb").close()
    return jar


def test_flink_alone_gets_the_installed_jar_every_core_and_the_worker_pool(tools):
    options = PipelineOptions(["--runner=FlinkRunner"])
    assert runners.apply_flink_defaults(options) is True
    flink, portable = options.view_as(FlinkRunnerOptions), options.view_as(PortableOptions)
    assert flink.flink_job_server_jar == tools
    assert tools.endswith("/flink/%s/beam-runners-flink-1.19-job-server-%s.jar"
                          % (apache_beam.__version__, apache_beam.__version__))
    assert flink.parallelism == os.cpu_count()
    assert portable.environment_type == "EXTERNAL"
    assert portable.sdk_worker_parallelism == os.cpu_count()
    assert portable.environment_cache_millis == runners.ENVIRONMENT_CACHE_MILLIS
    assert options.view_as(JobServerOptions).job_server_jvm_properties == [runners.OPEN_JAVA_UTIL]


def test_the_embedded_flink_opens_java_util_once_beside_the_users_jvm_flags(tools):
    options = PipelineOptions(["--runner=FlinkRunner", "--job_server_jvm_properties=-Xmx2g"])
    runners.apply_flink_defaults(options)
    assert options.view_as(JobServerOptions).job_server_jvm_properties == [
        "-Xmx2g", runners.OPEN_JAVA_UTIL]
    given = PipelineOptions(["--runner=FlinkRunner",
                             "--job_server_jvm_properties=" + runners.OPEN_JAVA_UTIL])
    runners.apply_flink_defaults(given)
    assert given.view_as(JobServerOptions).job_server_jvm_properties == [runners.OPEN_JAVA_UTIL]


def test_what_the_user_gives_wins(tools):
    options = PipelineOptions(["--runner=FlinkRunner", "--parallelism=3",
                               "--sdk_worker_parallelism=2", "--flink_job_server_jar=/x.jar"])
    assert runners.apply_flink_defaults(options) is True
    flink, portable = options.view_as(FlinkRunnerOptions), options.view_as(PortableOptions)
    assert (flink.parallelism, int(portable.sdk_worker_parallelism)) == (3, 2)
    assert flink.flink_job_server_jar == "/x.jar"
    loopback = PipelineOptions(["--runner=FlinkRunner", "--environment_type=LOOPBACK"])
    assert runners.apply_flink_defaults(loopback) is False
    assert loopback.view_as(PortableOptions).environment_type == "LOOPBACK"
    cluster = PipelineOptions(["--runner=FlinkRunner", "--flink_master=flink:8081"])
    assert runners.apply_flink_defaults(cluster) is False
    assert cluster.view_as(FlinkRunnerOptions).parallelism == -1      # the cluster's
    assert cluster.view_as(PortableOptions).environment_type is None


def test_kafka_is_expanded_beside_the_embedded_flinks_job_server_only(tools):
    jar = runners.flink_expansion_service_jar()
    assert jar == os.path.join(os.path.dirname(tools),
                               "beam-expansion-service-%s.jar" % apache_beam.__version__)
    with pytest.raises(runners.RunnerMissingError, match="run scripts/install_runners.sh flink"):
        runners.kafka_expansion_service(PipelineOptions(["--runner=FlinkRunner"]))
    open(jar, "wb").close()
    from apache_beam.transforms.external import JavaJarExpansionService
    for argv in (["--runner=FlinkRunner"], ["--runner=FlinkRunner", "--flink_master=[local]"]):
        service = runners.kafka_expansion_service(PipelineOptions(argv))
        assert isinstance(service, JavaJarExpansionService) and service.path_to_jar == jar
        assert "--defaultEnvironmentType=EMBEDDED" in service._append_args
    # Beam's default elsewhere: a Flink cluster, another job server, another runner.
    for argv in (["--runner=FlinkRunner", "--flink_master=flink:8081"],
                 ["--runner=FlinkRunner", "--flink_job_server_jar=/x.jar"],
                 ["--runner=PrismRunner"], []):
        assert runners.kafka_expansion_service(PipelineOptions(argv)) is None, argv


def test_a_missing_job_server_is_one_line_naming_the_install_script(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_TOOLS_DIR", str(tmp_path))
    with pytest.raises(runners.RunnerMissingError, match="run scripts/install_runners.sh flink"):
        runners.apply_flink_defaults(PipelineOptions(["--runner=FlinkRunner"]))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.replay", "--config", os.path.join(ROOT, "examples", "config.yaml"),
         "--input", __file__, "--output_dir", str(tmp_path / "out"), "--runner=FlinkRunner"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, CDP_TOOLS_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: the Flink job server for apache-beam %s is not installed" % apache_beam.__version__)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as fh:   # a zombie has ended
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_the_worker_pool_listens_and_ends_with_the_process_that_started_it():
    # A process starts a pool, prints the pool's pid, then is killed with SIGKILL (no cleanup).
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipelines.runners import WorkerPool; "
         "pool = WorkerPool(); print(pool._proc.pid, pool.port, flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pool_pid, port = map(int, starter.stdout.readline().split())
    assert _alive(pool_pid)
    import socket
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    starter.send_signal(signal.SIGKILL)
    starter.wait(10)
    deadline = time.monotonic() + 30
    while _alive(pool_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pool_pid)


def test_stop_ends_the_pool():
    pool = runners.WorkerPool()
    pid = pool._proc.pid
    pool.stop()
    assert not _alive(pid) and not os.path.exists(pool.log_path)


# -- Flink checkpoints and restore ---------------------------------------------------------------

def test_the_flink_checkpoint_options_pass_the_launcher_and_reach_beam():
    # Beam 2.62's Python SDK declares none of them (its FlinkRunner learns them from the job
    # server at submission); the launcher refused them as unknown options before it got there.
    from pipelines.cli import check_pipeline_arguments
    from pipelines.options import COMMAND_OPTIONS
    argv = ["--runner=FlinkRunner", "--streaming", "--checkpointing_interval=2000",
            "--state_backend=filesystem", "--state_backend_storage_path=file:///var/ck",
            "--externalized_checkpoints_enabled",
            "--retain_externalized_checkpoints_on_cancellation",
            "--savepoint_path=/var/ck/job/chk-3", "--allow_non_restored_state"]
    for command in ("pipelines.stream", "pipelines.replay"):
        check_pipeline_arguments(argv, command, COMMAND_OPTIONS)       # raises if refused
    given = PipelineOptions(argv).get_all_options(drop_default=True)
    assert {k: given[k] for k in ("checkpointing_interval", "state_backend",
                                  "state_backend_storage_path", "externalized_checkpoints_enabled",
                                  "retain_externalized_checkpoints_on_cancellation",
                                  "savepoint_path", "allow_non_restored_state")} == {
        "checkpointing_interval": 2000, "state_backend": "filesystem",
        "state_backend_storage_path": "file:///var/ck", "externalized_checkpoints_enabled": True,
        "retain_externalized_checkpoints_on_cancellation": True,
        "savepoint_path": "/var/ck/job/chk-3", "allow_non_restored_state": True}


def test_bad_checkpoint_option_values_are_one_line_errors():
    from pipelines.cli import UsageError, check_pipeline_arguments
    from pipelines.options import COMMAND_OPTIONS
    for argv, words in ((["--checkpointing_interval=0"], "above 0"),
                        (["--checkpointing_interval=1s"], "milliseconds"),
                        (["--state_backend=memory"], "invalid choice")):
        with pytest.raises(UsageError, match=words):
            check_pipeline_arguments(argv, "pipelines.stream", COMMAND_OPTIONS)


def _checkpoint(top, job, n, mtime, complete=True):
    folder = top / job / ("chk-%d" % n)
    folder.mkdir(parents=True)
    if complete:
        (folder / "_metadata").write_bytes(b"x")
        os.utime(folder / "_metadata", (mtime, mtime))
    return str(folder)


def test_the_latest_flink_checkpoint_is_the_newest_complete_one_of_any_job(tmp_path):
    top = tmp_path / "ck"
    assert runners.latest_flink_checkpoint(str(top)) is None
    _checkpoint(top, "job-a", 7, 1000)
    newest = _checkpoint(top, "job-b", 2, 2000)        # a restored job: a folder of its own
    _checkpoint(top, "job-b", 3, 3000, complete=False)  # in progress: no _metadata yet
    (top / "job-b" / "shared").mkdir()
    assert runners.latest_flink_checkpoint(str(top)) == newest
    assert runners.latest_flink_checkpoint("file://%s" % top) == newest
    with pytest.raises(ValueError, match="local directory"):
        runners.latest_flink_checkpoint("s3://bucket/ck")


def test_a_restore_path_without_a_checkpoint_is_refused_before_the_job_server_starts(
        tools, tmp_path):
    import pipelines.options  # noqa: F401  (registers the Flink checkpoint options)
    complete = _checkpoint(tmp_path, "job", 4, 1000)
    partial = _checkpoint(tmp_path, "job", 5, 1000, complete=False)
    for path in (complete, "file://" + complete, os.path.join(complete, "_metadata"),
                 "s3://bucket/savepoint-1"):     # other file systems are Flink's to check
        runners.apply_flink_defaults(PipelineOptions(["--savepoint_path=" + path]))
    for path in (partial, str(tmp_path / "nowhere")):
        with pytest.raises(runners.FlinkRestoreError, match="no savepoint or complete checkpoint"):
            runners.apply_flink_defaults(PipelineOptions(["--savepoint_path=" + path]))


def test_a_local_restore_goes_to_the_embedded_flink_as_its_savepoint_path(tools, tmp_path):
    # Beam 2.62's job server hands --savepoint_path to a Flink cluster only; the embedded Flink
    # reads Flink's execution.savepoint.path from the configuration directory it is given.
    from pipelines.options import FlinkCheckpointOptions
    restore = _checkpoint(tmp_path, "job", 9, 1000)
    mine = tmp_path / "conf"
    mine.mkdir()
    (mine / "flink-conf.yaml").write_text("taskmanager.numberOfTaskSlots: 4\n")
    options = PipelineOptions(["--runner=FlinkRunner", "--savepoint_path=" + restore,
                               "--flink_conf_dir=%s" % mine])
    runners.apply_flink_defaults(options)
    with runners.local_flink_restore(options) as directory:
        given = options.view_as(FlinkCheckpointOptions).flink_conf_dir
        assert given == directory and given != str(mine)
        with open(os.path.join(directory, "flink-conf.yaml")) as fh:
            assert fh.read().split("\n") == [
                "taskmanager.numberOfTaskSlots: 4", "", "execution.savepoint.path: " + restore,
                "execution.savepoint.ignore-unclaimed-state: false", ""]
    assert not os.path.exists(directory)
    # A cluster gets --savepoint_path from Beam itself; nothing is written for it.
    cluster = PipelineOptions(["--savepoint_path=" + restore, "--flink_master=host:8081"])
    with runners.local_flink_restore(cluster) as directory:
        assert directory is None


def test_ctrl_c_stops_beams_job_server_and_ends_as_an_interrupt():
    from apache_beam.runners.portability.job_server import StopOnExitJobServer

    class Server:
        stopped = 0

        def start(self):
            return "localhost:1"

        def stop(self):
            Server.stopped += 1

    assert runners.interrupt_stops_the_job_server()
    previous = signal.getsignal(signal.SIGINT)
    try:
        wrapped = StopOnExitJobServer(Server())
        wrapped.start()                      # installs its stop as the SIGINT handler
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
        assert Server.stopped == 1
        wrapped.stop()                       # at exit: already stopped, nothing more
        assert Server.stopped == 1
    finally:
        signal.signal(signal.SIGINT, previous)


def test_checkpoints_finish_each_bundle_before_the_barrier_unless_the_user_says_otherwise(tools):
    # Beam keeps what a step emitted in an open bundle inside the checkpoint until the step's next
    # element or watermark; the read's PlanPartitions step gets neither, so no partition was read.
    from pipelines.options import FlinkCheckpointOptions

    def finish(argv):
        options = PipelineOptions(["--runner=FlinkRunner"] + argv)
        runners.apply_flink_defaults(options)
        return options.view_as(FlinkCheckpointOptions).finish_bundle_before_checkpointing

    assert finish([]) is None                          # no checkpoints: Beam's default
    assert finish(["--checkpointing_interval=1000"]) is True
    assert finish(["--checkpointing_interval=1000", "--flink_master=flink:8081"]) is True
    assert finish(["--checkpointing_interval=1000",
                   "--finish_bundle_before_checkpointing=false"]) is False
    assert finish(["--finish_bundle_before_checkpointing"]) is True
    # It reaches the job server under Beam's name, as the Java FlinkPipelineOptions reads it.
    options = PipelineOptions(["--runner=FlinkRunner", "--checkpointing_interval=1000"])
    runners.apply_flink_defaults(options)
    assert options.get_all_options()["finish_bundle_before_checkpointing"] is True
