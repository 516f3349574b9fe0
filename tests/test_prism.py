"""The pipelines on Prism (``--runner=PrismRunner``), Beam's local portable runner.

Prism is the binary ``scripts/install_runners.sh prism`` builds (the test command runs it); these
tests fail, with that command in the message, when it is missing. Nothing here downloads anything.

* Bounded input: ``replay`` and ``stream`` on Prism write the same bytes as on the DirectRunner
  over a random data set, in every branch (Event Hub messages, Blob files, alerts posted to a
  webhook, dead letters, daily activity), and the summary's fields; its counters at most the
  DirectRunner's, because Prism 2.62 can lose a bundle's metrics (docs/RUNNERS.md).
* Runner choice: a live input with no ``--runner`` runs on Prism; with Prism missing, one line says
  how to install it.
* Live (``test_prism_live.py``): a delayed exit and a Blob window close reach their destinations
  while input is still flowing.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml

from pipelines import runners
from tests.datagen import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
PY = VENV_PY if os.path.exists(VENV_PY) else sys.executable

#: Outputs that differ between any two runs by design: the pipeline's own system events and the
#: summary carry run ids and wall times, the Blob state marker its update time.
RUN_SPECIFIC = ("system_events.jsonl", "summary.json", "report.html")


@pytest.fixture(scope="session")
def prism_binary():
    path = runners.prism_binary()
    if not os.access(path, os.X_OK):
        pytest.fail("Prism is not installed (%s): run %s" % (path, runners.INSTALL_PRISM),
                    pytrace=False)
    return path


def run_command(module, args, env=None, timeout=900):
    cmd = [PY, "-m", "pipelines." + module] + list(args)
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    for var in ("EVENTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"):
        full_env.pop(var, None)
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env)
    assert proc.returncode == 0, "%s exited %d\n%s\n%s" % (
        " ".join(cmd), proc.returncode, proc.stdout[-3000:], proc.stderr[-6000:])
    return proc


def output_files(out_dir):
    """{relative path: bytes} of every output but the run-specific ones, and the summary's counts."""
    files = {}
    for directory, _, names in os.walk(out_dir):
        for name in names:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, out_dir)
            if name in RUN_SPECIFIC or os.sep + "_state" + os.sep in os.sep + rel:
                continue
            with open(path, "rb") as fh:
                files[rel] = fh.read()
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    summary.pop("seconds")
    summary.pop("output_dir")
    return files, summary


def with_webhook_alerts(config, url):
    """The random config plus a webhook alert work on the input's system events (the pipeline's
    own work events carry run ids, so they are left out of what is compared)."""
    config = json.loads(json.dumps(config))
    config["works"].append({
        "id": "w-hook", "workflow": "webhook_system_events",
        "config": {"system_event_multiple_types": ["failed", "created", "updated", "synced"],
                   "system_event_sources": {"work": ["w-1", "w-2", "w-3", "w-4"], "segment": [],
                                            "user": [], "stream": [], "auth": [],
                                            "topic-document": []},
                   "webhook_url": url, "allow_private_network": True}})
    return config


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("command", ["replay", "stream"])
def test_prism_writes_what_the_direct_runner_writes(command, tmp_path, prism_binary, webhook_server):
    """``python -m pipelines.<command> ... --runner=PrismRunner`` (no other option) against
    ``--runner=DirectRunner`` on the same random data set: every file byte for byte, the same
    alert bodies posted to the webhook, the same counts."""
    config, lines = generate(11, n_users=150, days=20)
    config = with_webhook_alerts(config, webhook_server.url("/hook"))
    config_path, input_path = tmp_path / "config.yaml", tmp_path / "events.jsonl"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
                           encoding="utf-8")
    input_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = {}
    for runner in ("DirectRunner", "PrismRunner"):
        out = tmp_path / ("out-" + runner)
        before = len(webhook_server.requests("/hook"))
        proc = run_command(command, ["--config", str(config_path), "--input", str(input_path),
                                     "--output_dir", str(out), "--progress_seconds", "0",
                                     "--runner=" + runner, "--verbose"])
        # Beam logs the command it starts Prism with: the project's binary, found with no flag.
        assert (prism_binary in proc.stderr) == (runner == "PrismRunner")
        bodies = sorted(r.body for r in webhook_server.requests("/hook")[before:])
        results[runner] = output_files(out) + (bodies,)
    (direct_files, direct_summary, direct_alerts) = results["DirectRunner"]
    (prism_files, prism_summary, prism_alerts) = results["PrismRunner"]
    assert sorted(prism_files) == sorted(direct_files)
    for name in direct_files:
        assert prism_files[name] == direct_files[name], name
    assert_counts_at_most(prism_summary, direct_summary)
    assert prism_alerts == direct_alerts
    # Every branch delivered something, so the comparison covers it.
    names = list(direct_files)
    assert any(n.startswith("eventhub" + os.sep) and direct_files[n] for n in names)
    assert any(n.startswith("blob" + os.sep + "exports" + os.sep + "acme" + os.sep + "events")
               for n in names)
    assert any(n.startswith("blob" + os.sep + "exports" + os.sep + "acme" + os.sep + "system")
               for n in names)
    assert direct_files[os.path.join("deadletter", "input.jsonl")]
    assert direct_alerts and direct_summary["works"]["w-hook"]["alerts"] == len(direct_alerts)
    assert direct_summary["events_applied"] > 0


def assert_counts_at_most(summary, reference, path="summary"):
    """``summary`` has ``reference``'s shape and values, except that each count may be lower:
    Prism 2.62 can lose a bundle's metric payload (docs/RUNNERS.md), never add one."""
    if isinstance(reference, dict):
        assert isinstance(summary, dict) and sorted(summary) == sorted(reference), path
        for key in reference:
            assert_counts_at_most(summary[key], reference[key], "%s.%s" % (path, key))
    elif isinstance(reference, int) and not isinstance(reference, bool):
        assert isinstance(summary, int) and 0 <= summary <= reference, (path, summary, reference)
    else:
        assert summary == reference, path


@pytest.mark.parametrize("summary, fits", [
    ({"a": 3, "b": {"c": 2}, "mode": "x"}, True),
    ({"a": 1, "b": {"c": 0}, "mode": "x"}, True),
    ({"a": 4, "b": {"c": 2}, "mode": "x"}, False),
    ({"a": 3, "b": {"c": 2}, "mode": "y"}, False),
    ({"a": 3, "b": {}, "mode": "x"}, False),
])
def test_the_summary_check_allows_lost_counts_only(summary, fits):
    reference = {"a": 3, "b": {"c": 2}, "mode": "x"}
    if fits:
        assert_counts_at_most(summary, reference)
    else:
        with pytest.raises(AssertionError):
            assert_counts_at_most(summary, reference)


class _Built(Exception):
    """Raised instead of running a pipeline: its graph was captured."""


def test_every_flatten_has_one_coder_for_its_inputs_and_output(tmp_path, monkeypatch):
    """Prism 2.62 runs a Flatten itself and gives each input PCollection the Flatten's output
    coder by rewriting that input's coder id, for every PCollection sharing it. An input coded
    as "any" (FastPrimitivesCoder) flattened into ``(key, any)`` redefined the shared "any" coder
    as a KV holding itself, and the bounded graph failed with "unknown coder urn key:
    beam:coder:pickled_python:v1". So every Flatten of the commands' graphs has its inputs and
    output in one coder (checked on the graph, which is what Prism receives). The graph is
    ``replay --state``'s: the output side is ``stream``'s too, and ``--state`` adds the system
    events' dedupe with the snapshot's memory."""
    import apache_beam as beam
    from pipelines import replay
    config, lines = generate(11, n_users=20, days=6)
    config = with_webhook_alerts(config, "http://127.0.0.1:9/hook")
    config_path, input_path = tmp_path / "config.yaml", tmp_path / "events.jsonl"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
                           encoding="utf-8")
    input_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    graphs = []

    def capture(pipeline, *args, **kwargs):
        graphs.append(pipeline.to_runner_api())
        raise _Built()

    monkeypatch.setattr(beam.Pipeline, "run", capture)
    replay.run(["--config", str(config_path), "--input", str(input_path), "--output_dir",
                str(tmp_path / "out"), "--progress_seconds", "0", "--state",
                str(tmp_path / "state.parquet")])
    assert len(graphs) == 1
    components = graphs[0].components
    coder = {pid: p.coder_id for pid, p in components.pcollections.items()}
    flattens = [t for t in components.transforms.values()
                if t.spec.urn == "beam:transform:flatten:v1"]
    mixed = [(t.unique_name, coder[next(iter(t.outputs.values()))],
              sorted({coder[i] for i in t.inputs.values()})) for t in flattens
             if {coder[i] for i in t.inputs.values()} != {coder[next(iter(t.outputs.values()))]}]
    assert any(t.unique_name.endswith("WithMemory") for t in flattens)
    assert any(t.unique_name.endswith("WriteSystemEventLog/Merge") for t in flattens)
    assert not mixed


# -- which runner ---------------------------------------------------------------------------------

def _options(*args):
    from apache_beam.options.pipeline_options import PipelineOptions
    return PipelineOptions(list(args))


def _view(options):
    from apache_beam.options.pipeline_options import PrismRunnerOptions, StandardOptions
    return (options.view_as(StandardOptions).runner,
            options.view_as(PrismRunnerOptions).prism_location)


def test_a_live_input_with_no_runner_runs_on_the_projects_prism(tmp_path):
    binary = tmp_path / "prism"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    options = _options("--streaming")
    assert runners.choose_runner(options, live=True, binary=str(binary)) == "PrismRunner"
    assert _view(options) == ("PrismRunner", str(binary))
    # A named runner is kept, live or not; a bounded input stays on Beam's default.
    for named in ("DirectRunner", "FlinkRunner"):
        options = _options("--runner=" + named)
        assert runners.choose_runner(options, live=True, binary=str(binary)) == named
        assert _view(options) == (named, None)
    options = _options()
    assert runners.choose_runner(options, live=False, binary=str(binary)) is None
    assert _view(options) == (None, None)
    # --runner=PrismRunner on a bounded input finds the same binary with no other flag.
    options = _options("--runner=PrismRunner")
    runners.choose_runner(options, live=False, binary=str(binary))
    assert _view(options) == ("PrismRunner", str(binary))
    # --prism_location wins.
    options = _options("--runner=PrismRunner", "--prism_location=/elsewhere/prism")
    runners.choose_runner(options, live=False, binary=str(binary))
    assert _view(options) == ("PrismRunner", "/elsewhere/prism")


def test_streaming_a_bounded_input_on_prism_is_refused_in_one_line(tmp_path, prism_binary):
    """Prism 2.62 refuses the empty MaybeReshuffle that Beam's Create keeps under --streaming
    (apache/beam#34564), after it has started: the command says so before anything runs."""
    config, lines = generate(3, n_users=5, days=2)
    config_path, input_path = tmp_path / "config.yaml", tmp_path / "events.jsonl"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    input_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run([PY, "-m", "pipelines.stream", "--config", str(config_path),
                             "--input", str(input_path), "--output_dir", str(tmp_path / "out"),
                             "--streaming", "--runner=PrismRunner"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("error: --streaming with a bounded input does not run on Prism %s "
                             "(apache/beam#34564): drop --streaming, or use --runner=DirectRunner "
                             "or FlinkRunner\n" % runners.beam_version())
    assert not (tmp_path / "out").exists()


def test_on_prism_the_job_streams_outlive_beams_one_minute_default(tmp_path):
    """Beam 2.62 opens a job's state and message streams with ``--job_server_timeout`` (60 s by
    default) as their deadline: a live run on Prism ended after a minute with DEADLINE_EXCEEDED.
    On Prism the commands make it ten years unless it is given; other runners keep Beam's."""
    from apache_beam.options.pipeline_options import PortableOptions
    binary = tmp_path / "prism"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    options = _options("--streaming")
    runners.choose_runner(options, live=True, binary=str(binary))
    assert options.view_as(PortableOptions).job_server_timeout == 10 * 365 * 24 * 3600
    options = _options("--runner=PrismRunner", "--job_server_timeout=90")
    runners.choose_runner(options, live=False, binary=str(binary))
    assert options.view_as(PortableOptions).job_server_timeout == 90
    options = _options("--runner=DirectRunner")
    runners.choose_runner(options, live=True, binary=str(binary))
    assert options.view_as(PortableOptions).job_server_timeout == 60


def test_the_prism_binary_is_the_one_install_runners_builds_for_the_installed_beam():
    import apache_beam
    assert runners.prism_binary() == os.path.join(
        ROOT, ".tools", "prism", "v" + apache_beam.__version__, "prism")
    with open(os.path.join(ROOT, "scripts", "install_runners.sh"), encoding="utf-8") as fh:
        script = fh.read()
    assert 'dest="$root/.tools/prism/v$version"' in script and 'bin="$dest/prism"' in script
    assert "go build -o \"$bin.tmp\" github.com/apache/beam/sdks/v2/go/cmd/prism" in script
    # The Go module the script builds from pins Beam's at the installed version.
    with open(os.path.join(ROOT, "scripts", "prism", "go.mod"), encoding="utf-8") as fh:
        assert "require github.com/apache/beam/sdks/v2 v%s\n" % apache_beam.__version__ in fh.read()


def test_a_live_run_with_prism_missing_says_in_one_line_how_to_install_it(
        tmp_path, local_eventhubs, monkeypatch, capsys):
    from pipelines import stream
    (tmp_path / "config.yaml").write_text(LIVE_CONFIG_MINIMAL)
    monkeypatch.setenv("IN_CS", local_eventhubs.connection_string)
    monkeypatch.setattr(runners, "prism_binary", lambda: str(tmp_path / "no" / "prism"))
    status = stream.run(["--config", str(tmp_path / "config.yaml"), "--streaming",
                         "--output_dir", str(tmp_path / "out"),
                         "--input", "eventhubs://hub?connection_string_env=IN_CS&mode=live"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: Prism v")
    assert "is not installed" in err and "run scripts/install_runners.sh prism" in err


LIVE_CONFIG_MINIMAL = """
account: {name: acme, aid: 1234}
audiences:
  - {id: a1, slug: recent_buyers, condition: {event: purchase, within: 10s}}
works:
  - {id: w-eh, workflow: eventhub_audience_export, config: {}}
"""
