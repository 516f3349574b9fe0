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
from apache_beam.options.pipeline_options import (FlinkRunnerOptions, PipelineOptions,
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
