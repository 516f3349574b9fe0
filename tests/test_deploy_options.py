"""Deployment, what is typed and read, checked as far as a machine without Docker, Dataflow or a
Flink cluster allows (the sdist and the launcher image: ``test_deploy_packaging.py``).

* ``deploy/dataflow/metadata.json`` (Flex Template metadata) describes exactly the pipelines'
  options, with regexes that accept what the options accept.
* Every command in ``docs/DEPLOY.md`` and ``deploy/flink/README.md`` parses with Beam's option
  classes to the documented values (no job is submitted); Dataflow's option validator accepts the
  Dataflow ones; the Flink checkpoint options reach a job server the way Beam forwards them.
* The documented commands carry no secret, and the counters ``docs/DEPLOY.md`` lists are the ones
  the code reports.

See docs/DEPLOY.md, section 7.
"""
import json
import os
import re
import shlex

import pytest
from apache_beam.options.pipeline_options import (DebugOptions, FlinkRunnerOptions,
                                                  GoogleCloudOptions, PipelineOptions,
                                                  PortableOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

import pipelines.replay  # registers ReplayOptions with Beam, as running the command does
from pipelines.options import REQUIRED_OPTIONS, ActivationOptions, ReplayOptions
from tests.test_deploy_packaging import PACKAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY_MD = os.path.join(ROOT, "docs", "DEPLOY.md")
FLINK_MD = os.path.join(ROOT, "deploy", "flink", "README.md")
METADATA = os.path.join(ROOT, "deploy", "dataflow", "metadata.json")


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _block(path, name):
    """The fenced code block that follows ``<!-- test:NAME -->`` in a Markdown file."""
    match = re.search(r"<!-- test:%s -->\s*```[a-z]*\n(.*?)```" % re.escape(name), _read(path),
                      re.S)
    assert match, "%s: no code block marked <!-- test:%s -->" % (os.path.relpath(path, ROOT), name)
    return match.group(1)


def _command(path, name):
    """``(module, argv)`` of a documented ``python -m MODULE ARGS`` command."""
    words = shlex.split(_block(path, name).replace("\\\n", " "))
    assert words[:2] == ["python", "-m"], words[:3]
    return words[2], words[3:]


def _options(argv):
    return PipelineOptions(argv)


# -- 1. Flex Template metadata --------------------------------------------------------------

TEMPLATE_KEYS = {"name", "description", "parameters", "streaming", "supportsAtLeastOnce",
                 "supportsExactlyOnce", "defaultStreamingMode"}
PARAMETER_KEYS = {"name", "label", "helpText", "isOptional", "regexes", "paramType",
                  "customMetadata", "groupName", "parentName", "parentTriggerValues",
                  "enumOptions", "defaultValue", "hiddenUi"}
PARAM_TYPES = {"DEFAULT", "TEXT", "GCS_READ_BUCKET", "GCS_WRITE_BUCKET", "GCS_READ_FILE",
               "GCS_WRITE_FILE", "GCS_READ_FOLDER", "GCS_WRITE_FOLDER", "BOOLEAN", "ENUM", "NUMBER"}


def _metadata():
    with open(METADATA, encoding="utf-8") as fh:
        return json.load(fh)


def _parameters():
    return {p["name"]: p for p in _metadata()["parameters"]}


def _declared_options():
    """``{dest: (argparse action, options class)}`` of the pipelines' own options."""
    import argparse
    declared = {}
    for cls in (ActivationOptions, ReplayOptions):
        parser = argparse.ArgumentParser(add_help=False)
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
        for action in parser._actions:  # pylint: disable=protected-access
            declared[action.dest] = (action, cls)
    return declared


def test_metadata_has_the_flex_template_fields():
    metadata = _metadata()
    assert set(metadata) <= TEMPLATE_KEYS, set(metadata) - TEMPLATE_KEYS
    assert isinstance(metadata["name"], str) and metadata["name"].strip()
    assert isinstance(metadata["description"], str) and metadata["description"].strip()
    assert isinstance(metadata["parameters"], list) and metadata["parameters"]
    names = [p.get("name") for p in metadata["parameters"]]
    assert len(names) == len(set(names)), "duplicate parameter names"
    for parameter in metadata["parameters"]:
        assert set(parameter) <= PARAMETER_KEYS, (parameter.get("name"), set(parameter) - PARAMETER_KEYS)
        for key in ("name", "label", "helpText"):
            assert isinstance(parameter.get(key), str) and parameter[key].strip(), (names, key)
        assert isinstance(parameter.get("isOptional", False), bool)
        assert parameter.get("paramType", "DEFAULT") in PARAM_TYPES
        for regex in parameter.get("regexes", []):
            # Anchored, so Java's full match and Python's search agree.
            assert regex.startswith("^") and regex.endswith("$"), regex
            re.compile(regex)


def test_metadata_parameters_are_exactly_the_pipeline_options():
    declared = _declared_options()
    parameters = _parameters()
    assert set(parameters) == set(declared), (
        "in metadata but not an option: %s; an option missing from metadata: %s"
        % (sorted(set(parameters) - set(declared)), sorted(set(declared) - set(parameters))))
    for name, (action, cls) in declared.items():
        parameter = parameters[name]
        required = action.required or action.dest in REQUIRED_OPTIONS
        assert parameter.get("isOptional", False) == (not required), name
        assert action.help and action.help.strip(), "%s has no argparse help" % name
        if cls is ReplayOptions:
            assert "replay" in parameter["helpText"].lower(), "%s is replay-only: say so" % name


GOOD = {
    "config": ["/template/examples/config.yaml", "/template/configs/acme.yml",
               "/template/configs/acme.json"],
    "input": ["gs://my-bucket/events/*.jsonl", "gs://b/archive/2026/11/part-0001.parquet"],
    "output_dir": ["out", "/tmp/cdp-out"],
    "verbose": ["true", "false"],
    "progress_seconds": ["0", "5", "2.5"],
    "flush_seconds": ["0", "10", "0.5"],
    "blob_grace_seconds": ["300", "60.5"],
    "start": ["2026-11-01T00:00:00Z", "2026-11-01T00:00:00.5+02:00", "1793491200",
              "1793491200.25", "2026-11-01"],
    "end": ["2026-11-08T00:00:00Z", "2026-11-08T00:00:00.123456-05:30", "1794096000",
            "2026-11-08"],
    "as_of": ["2026-11-20T23:59:59.999999Z", "1794096000", "2026-11-21"],
    "state": ["gs://bucket/jobs/acme/audiences.parquet", "azfs://acct/c/state.parquet"],
}
BAD = {
    "config": ["examples/config.yaml", "gs://b/config.yaml", "/template/config.txt", ""],
    "input": ["/mnt/events/*.jsonl", "s3://b/events.jsonl", ""],
    "output_dir": ["", "a\nb"],
    "verbose": ["yes", "1", ""],
    "progress_seconds": ["-1", "abc", "5s", ""],
    "flush_seconds": ["-1", "10s", ""],
    "blob_grace_seconds": ["5m", "-300", ""],
    "start": ["2026-11-01T", "yesterday", "-5", "", "2026-11-1"],
    "end": ["2026-11-08 00:00", "tomorrow", "", "2026-11-08T00:00"],
    "as_of": ["2026-11-20T", "now", ""],
    "state": ["audiences.parquet", "gs://bucket/x\nother", ""],
}


def _accepted(parameter, value):
    return all(re.search(regex, value) for regex in parameter.get("regexes", []))


def test_metadata_regexes_accept_good_values_and_refuse_bad_ones():
    parameters = _parameters()
    assert set(GOOD) == set(parameters) == set(BAD), "add examples for new parameters here"
    for name, parameter in parameters.items():
        for value in GOOD[name]:
            assert _accepted(parameter, value), (name, value)
        for value in BAD[name]:
            assert not _accepted(parameter, value), (name, value)


def test_values_the_regexes_accept_are_accepted_by_the_pipelines():
    """A template parameter arrives as ``--name=value``: what the metadata lets through must parse."""
    base = ["--config=/template/examples/config.yaml", "--input=gs://b/x.jsonl"]
    declared = _declared_options()
    for name, values in GOOD.items():
        if name == "verbose":
            continue  # a flag without a value: see test_verbose_accepts_a_template_value
        action, cls = declared[name]
        for value in values:
            options = _options(base + ["--%s=%s" % (name, value)])
            parsed = getattr(options.view_as(cls), name)
            assert parsed == (action.type(value) if action.type else value), (name, value, parsed)
            if cls is ReplayOptions:
                assert pipelines.replay._time_range(options) is not None, (name, value)


def test_verbose_accepts_a_template_value():
    base = ["--config=/template/examples/config.yaml", "--input=gs://b/x.jsonl"]
    try:
        assert _options(base + ["--verbose=true"]).view_as(ActivationOptions).verbose is True
        assert _options(base + ["--verbose=false"]).view_as(ActivationOptions).verbose is False
    except SystemExit:
        pytest.fail("argparse rejected --verbose=<value>")


def test_flex_template_run_example_uses_the_metadata():
    parameters = _parameters()
    words = shlex.split(_block(DEPLOY_MD, "flex-run").replace("\\\n", " "))
    given = {}
    for flag, value in zip(words, words[1:]):
        if flag == "--parameters":
            key, _, val = value.partition("=")
            given[key] = val
    assert given, "the flex-template run example passes no --parameters"
    for key, value in given.items():
        assert key in parameters, key
        assert _accepted(parameters[key], value), (key, value)
    required = {n for n, p in parameters.items() if not p.get("isOptional", False)}
    assert required <= set(given), required - set(given)


# -- 2. Dataflow commands -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dataflow-stream", "dataflow-replay"])
def test_dataflow_commands_parse_and_pass_dataflow_validation(name):
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    module, argv = _command(DEPLOY_MD, name)
    assert module == "pipelines." + name.split("-")[1]
    options = _options(argv)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    cloud = options.view_as(GoogleCloudOptions)
    assert cloud.project and cloud.region and cloud.temp_location.startswith("gs://")
    assert os.path.samefile(os.path.join(ROOT, options.view_as(SetupOptions).setup_file),
                            os.path.join(ROOT, "setup.py"))
    activation = options.view_as(ActivationOptions)
    assert os.path.isfile(os.path.join(ROOT, activation.config)), activation.config
    assert activation.input.startswith("gs://")
    assert PipelineOptionsValidator(options, DataflowRunner()).validate() == []
    if module == "pipelines.replay":
        assert pipelines.replay._time_range(options) is not None


def test_documented_dataflow_tuning_options_parse():
    _, argv = _command(DEPLOY_MD, "dataflow-stream")
    options = _options(argv)
    assert options.view_as(WorkerOptions).max_cache_memory_usage_mb == 256
    assert options.view_as(WorkerOptions).max_num_workers == 10
    assert options.view_as(DebugOptions).number_of_worker_harness_threads == 12
    assert "use_runner_v2" in options.view_as(DebugOptions).experiments


def test_beam_adds_runner_v2_and_streaming_engine_on_dataflow():
    """What the page says Beam 2.62 does by itself (private helpers of the DataflowRunner)."""
    from apache_beam.runners.dataflow import dataflow_runner
    _, argv = _command(DEPLOY_MD, "dataflow-stream")
    argv = [a for a in argv if not a.startswith("--experiments")] + ["--streaming"]
    options = _options(argv)
    dataflow_runner._check_and_add_missing_options(options)  # pylint: disable=protected-access
    dataflow_runner._check_and_add_missing_streaming_options(options)  # pylint: disable=protected-access
    experiments = options.view_as(DebugOptions).experiments
    assert {"use_runner_v2", "enable_streaming_engine"} <= set(experiments), experiments


# -- 3. Flink commands ----------------------------------------------------------------------

FLINK = {
    "flink-docker": ("DOCKER", lambda c: c == "registry.example.com/cdp-activation-sdk:0.1.0"),
    "flink-process": ("PROCESS", lambda c: json.loads(c) == {"command": "/opt/apache/beam/boot"}),
    "flink-external": ("EXTERNAL", lambda c: c == "localhost:50000"),
}


@pytest.mark.parametrize("name", sorted(FLINK))
def test_flink_commands_parse_to_the_documented_values(name):
    module, argv = _command(FLINK_MD, name)
    assert module == "pipelines.stream"
    options = _options(argv)
    standard = options.view_as(StandardOptions)
    assert standard.runner == "FlinkRunner" and standard.streaming is True
    flink = options.view_as(FlinkRunnerOptions)
    assert flink.flink_master == "flink-jobmanager:8081"
    assert flink.flink_version == "1.19" and flink.flink_version in flink.PUBLISHED_FLINK_VERSIONS
    assert flink.parallelism == 8
    portable = options.view_as(PortableOptions)
    environment_type, config_ok = FLINK[name]
    assert portable.environment_type == environment_type
    assert config_ok(portable.environment_config), portable.environment_config
    if name == "flink-docker":
        assert flink.max_parallelism == 128
        assert int(portable.sdk_worker_parallelism) == 4
        assert options.view_as(WorkerOptions).max_cache_memory_usage_mb == 256


def test_flink_master_gets_an_http_scheme():
    from apache_beam.runners.portability.flink_runner import FlinkRunner
    assert FlinkRunner.add_http_scheme("flink-jobmanager:8081") == "http://flink-jobmanager:8081"


class _FakeJobService:
    """Answers DescribePipelineOptions as a Flink job server does, for the checkpoint options."""

    def __init__(self, describe=True):
        from apache_beam.portability.api import beam_job_api_pb2
        option_type = beam_job_api_pb2.PipelineOptionType
        options = [("checkpointing_interval", option_type.INTEGER),
                   ("externalized_checkpoints_enabled", option_type.BOOLEAN),
                   ("retain_externalized_checkpoints_on_cancellation", option_type.BOOLEAN),
                   ("state_backend", option_type.STRING),
                   ("state_backend_storage_path", option_type.STRING)] if describe else []
        self._response = beam_job_api_pb2.DescribePipelineOptionsResponse(options=[
            beam_job_api_pb2.PipelineOptionDescriptor(name=n, type=t, description=n)
            for n, t in options])

    def DescribePipelineOptions(self, request, timeout=None):  # pylint: disable=invalid-name
        return self._response


@pytest.mark.parametrize("uber_jar", [False, True])
@pytest.mark.parametrize("name", sorted(FLINK))
def test_flink_checkpoint_options_reach_the_job_server(name, uber_jar):
    """The checkpoint options are Flink's (Java), not Python's: Beam forwards them when the job
    server describes them, or as they are with ``--flink_submit_uber_jar``."""
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    _, argv = _command(FLINK_MD, name)
    handle = JobServiceHandle(_FakeJobService(describe=not uber_jar), _options(argv),
                              retain_unknown_options=uber_jar)
    sent = dict(handle.get_pipeline_options().items())
    assert str(sent["beam:option:checkpointing_interval:v1"]) == "60000"
    assert sent["beam:option:externalized_checkpoints_enabled:v1"] is True
    assert sent["beam:option:streaming:v1"] is True
    assert str(sent["beam:option:parallelism:v1"]) == "8"


def test_flink_job_server_jar_is_the_one_beam_downloads():
    from apache_beam.utils.subprocess_server import JavaJarServer
    _, argv = _command(FLINK_MD, "flink-docker")
    version = _options(argv).view_as(FlinkRunnerOptions).flink_version
    url = _block(FLINK_MD, "flink-jar").strip()
    assert url == JavaJarServer.path_to_beam_jar(":runners:flink:%s:job-server:shadowJar" % version)


# -- 4. secrets and metrics -----------------------------------------------------------------

SECRET_PATTERNS = re.compile(r"SharedAccessKey|AccountKey|SharedAccessSignature|password\s*=|"
                             r"--azure_connection_string|--connection_string|sig=", re.I)


def test_documented_commands_carry_no_secret():
    for path, names in ((DEPLOY_MD, ["dataflow-stream", "dataflow-replay", "flex-run"]),
                        (FLINK_MD, sorted(FLINK))):
        for name in names:
            block = _block(path, name)
            assert not SECRET_PATTERNS.search(block), (name, SECRET_PATTERNS.search(block).group(0))


_COUNTER = re.compile(r"Metrics\.counter\(\s*(?P<namespace>[^,()]+?)\s*,\s*(?P<name>[^()]+?)\s*\)")
_NAMESPACE_PREFIX = re.compile(r"namespace\s*=\s*\"([\w-]+:)\"\s*\+")


def _counters_in_code():
    """``(namespaces, names)``: literal namespaces or ``prefix:`` ones, literal counter names."""
    namespaces, names = set(), set()
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for filename in files:
                if not filename.endswith(".py"):
                    continue
                text = _read(os.path.join(directory, filename))
                for match in _COUNTER.finditer(text):
                    namespace, name = match.group("namespace"), match.group("name")
                    literal = re.fullmatch(r"\"([\w:-]+)\"", namespace)
                    prefix = re.match(r"\"([\w-]+:)\"\s*\+", namespace)
                    if literal:
                        namespaces.add(literal.group(1))
                    elif prefix:
                        namespaces.add(prefix.group(1))
                    else:  # a variable: its assignments in the same file
                        namespaces.update(_NAMESPACE_PREFIX.findall(text))
                    if re.fullmatch(r"\"\w+\"", name):
                        names.add(name.strip('"'))
                names.update(re.findall(r"_CountDelivered\([^()]*\"(\w+)\"\)", text))
    return namespaces, names


def _metrics_section():
    text = _read(DEPLOY_MD)
    start = text.index("## 6. Metrics operators watch")
    return text[start:text.index("\n## ", start + 1)]


def test_every_counter_in_the_code_is_documented():
    namespaces, names = _counters_in_code()
    assert {"input", "audiences", "audience:", "work:"} <= namespaces, namespaces
    section = _metrics_section()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented_namespaces = {re.match(r"\| `([\w-]+:?)", row).group(1) for row in rows}
    documented_names = {n for row in rows for n in re.findall(r"`(\w+)`", row.split("|")[2])}
    assert namespaces <= documented_namespaces, namespaces - documented_namespaces
    assert names <= documented_names, "undocumented counters: %s" % sorted(names - documented_names)
    assert documented_names <= names, "documented, not in the code: %s" % sorted(
        documented_names - names)
