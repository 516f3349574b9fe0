"""Deployment, checked as far as a machine without Docker, Dataflow or a Flink cluster allows.

* The sdist that ``--setup_file`` makes (what Dataflow and Flink workers install) holds every
  module of the packages and the sample config; it is built with Beam's own stager.
* ``deploy/dataflow/metadata.json`` (Flex Template metadata) describes exactly the pipelines'
  options, with regexes that accept what the options accept.
* ``deploy/dataflow/Dockerfile`` is a Python Flex Template launcher image whose env points at files
  it copies from this repository.
* Every command in ``docs/DEPLOY.md`` and ``deploy/flink/README.md`` parses with Beam's option
  classes to the documented values (no job is submitted); Dataflow's option validator accepts the
  Dataflow ones; the Flink checkpoint options reach a job server the way Beam forwards them.
* The counters ``docs/DEPLOY.md`` lists are the ones the code reports.

See docs/DEPLOY.md, section 7.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

import apache_beam
import pytest
from apache_beam.options.pipeline_options import (DebugOptions, FlinkRunnerOptions,
                                                  GoogleCloudOptions, PipelineOptions,
                                                  PortableOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)
from packaging.specifiers import SpecifierSet

import pipelines.replay  # registers ReplayOptions with Beam, as running the command does
from pipelines.options import REQUIRED_OPTIONS, ActivationOptions, ReplayOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY_MD = os.path.join(ROOT, "docs", "DEPLOY.md")
FLINK_MD = os.path.join(ROOT, "deploy", "flink", "README.md")
METADATA = os.path.join(ROOT, "deploy", "dataflow", "metadata.json")
DOCKERFILE = os.path.join(ROOT, "deploy", "dataflow", "Dockerfile")

#: The packages the workers need (setup.py's find_packages) and the data file they must carry.
# The runtime the workers need; the local Event Hubs endpoint (emulators/) and the bench are not
# installed (test_the_sdist_leaves_out_what_only_a_checkout_runs).
PACKAGES = ("core", "clients", "pipelines", "transforms")
CHECKOUT_ONLY = ("emulators", "bench", "tests")
DATA_FILES = ("examples/config.yaml",)


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


# -- 1. the sdist the workers install -------------------------------------------------------

def _expected_sdist_files():
    expected = set(DATA_FILES) | {"setup.py"}
    for package in PACKAGES:
        for directory, subdirs, files in os.walk(os.path.join(ROOT, package)):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            for name in files:
                if name.endswith((".py", ".yaml", ".json")):  # modules and package_data
                    expected.add(os.path.relpath(os.path.join(directory, name), ROOT)
                                 .replace(os.sep, "/"))
    return expected


def _copy_repository(destination):
    """The working tree as a user has it, without the virtualenv, outputs and build leftovers."""
    skip = {".git", ".venv", "out", "node_modules", ".tools", "build", "dist", "__pycache__",
            ".pytest_cache", ".hypothesis"}

    def ignore(directory, names):
        ignored = {n for n in names if n in skip or n.endswith(".egg-info")}
        if os.path.abspath(directory) == os.path.join(ROOT, "bench"):
            ignored.add("data")
        return ignored

    shutil.copytree(ROOT, destination, ignore=ignore)


_BUILD_SDIST = """
import subprocess, sys
setup_file, out = sys.argv[1], sys.argv[2]
try:
    from apache_beam.runners.portability.stager import Stager
    build = Stager._build_setup_package
except (ImportError, AttributeError):  # Beam moved it: do what it does
    build = None
if build is not None:
    print(build(setup_file, out))
else:
    import glob, os
    os.chdir(os.path.dirname(setup_file))
    try:
        subprocess.check_call([sys.executable, "-m", "build", "--no-isolation", "--sdist",
                               "--outdir", out, "."])
    except subprocess.CalledProcessError:
        subprocess.check_call([sys.executable, "setup.py", "sdist", "--dist-dir", out])
    print(glob.glob(os.path.join(out, "*.tar.gz"))[0])
"""


def test_sdist_holds_every_module_and_the_sample_config(tmp_path):
    """What ``--setup_file ./setup.py`` ships to every Dataflow or Flink worker.

    Built as Beam's stager builds it (``python -m build --sdist --no-isolation`` when ``build`` is
    installed, else ``python setup.py sdist``), from a copy of the repository. If this fails,
    setup.py must list the missing files: a new package in ``packages=find_packages(include=[...])``
    (and an ``__init__.py`` in every package folder), data inside a package in ``package_data``,
    data outside the packages in ``data_files``.
    """
    source, out = tmp_path / "src", tmp_path / "dist"
    _copy_repository(source)
    out.mkdir()
    result = subprocess.run([sys.executable, "-c", _BUILD_SDIST, str(source / "setup.py"), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    tarball = result.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as archive:
        members = archive.getnames()
        top = members[0].split("/")[0]
        held = {m.split("/", 1)[1] for m in members if "/" in m}
        missing = sorted(_expected_sdist_files() - held)
        assert not missing, "the sdist lacks %s: see this test's docstring for the setup.py fix" \
            % missing
        archive.extractall(tmp_path / "unpacked")

    # A worker's `pip install` runs setup.py from the unpacked sdist: it must build every package
    # from what the sdist holds alone.
    unpacked, lib = tmp_path / "unpacked" / top, tmp_path / "lib"
    result = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base",
                             str(tmp_path / "b"), "--build-lib", str(lib)],
                            cwd=unpacked, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    built = {os.path.relpath(os.path.join(d, f), lib).replace(os.sep, "/")
             for d, _, files in os.walk(lib) for f in files}
    modules = {f for f in _expected_sdist_files() if f.endswith(".py") and f != "setup.py"}
    assert not modules - built, sorted(modules - built)
    # What only a checkout runs (the local endpoint, the bench, the tests) is not installed.
    assert not {f for f in built if f.split("/")[0] in CHECKOUT_ONLY}, sorted(built)[:20]


# -- 2. Flex Template metadata --------------------------------------------------------------

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


# -- 3. the Flex Template Dockerfile --------------------------------------------------------

def _dockerfile(build_args=None):
    """``(instructions, variables)``: [(INSTRUCTION, text)] with ARG/ENV values expanded."""
    text = re.sub(r"\\\n", " ", _read(DOCKERFILE))
    variables, instructions = {}, []

    def expand(value):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                      lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG":
            key, _, default = rest.partition("=")
            variables[key] = (build_args or {}).get(key, default.strip('"'))
        elif instruction == "ENV":
            key, _, value = rest.partition("=") if "=" in rest.split()[0] else rest.partition(" ")
            variables[key.strip()] = expand(value.strip().strip('"'))
        instructions.append((instruction, expand(rest)))
    return instructions, variables


def _setup_text():
    return _read(os.path.join(ROOT, "setup.py"))


def test_dockerfile_uses_the_python_flex_template_launcher_base():
    instructions, _ = _dockerfile()
    froms = [rest for instruction, rest in instructions if instruction == "FROM"]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"gcr\.io/dataflow-templates-base/python3(\d+)-template-launcher-base"
                         r"(:[\w.-]+|@sha256:[0-9a-f]{64})?", froms[0])
    assert match, froms[0]
    requires = re.search(r"python_requires\s*=\s*['\"]([^'\"]+)", _setup_text()).group(1)
    assert "3.%s" % match.group(1) in SpecifierSet(requires), (froms[0], requires)
    assert instructions[-1] == ("ENTRYPOINT", '["/opt/google/dataflow/python_template_launcher"]')


def test_dockerfile_installs_the_tested_beam_and_the_project():
    instructions, variables = _dockerfile()
    assert variables["BEAM_VERSION"] == apache_beam.__version__, \
        "the image launches with Beam %s, the tests run %s" % (variables["BEAM_VERSION"],
                                                              apache_beam.__version__)
    spec = re.search(r"['\"]apache-beam([^'\"]*)['\"]", _setup_text()).group(1)
    assert variables["BEAM_VERSION"] in SpecifierSet(spec), spec
    runs = " ".join(rest for instruction, rest in instructions if instruction == "RUN")
    assert 'apache-beam[gcp]==%s' % apache_beam.__version__ in runs
    workdir = variables["WORKDIR"]
    assert re.search(r"pip install (--\S+ )*%s(\s|$)" % re.escape(workdir), runs), runs


def _copies(instructions):
    """``[(repository path, image path)]`` of the COPY instructions."""
    pairs = []
    for instruction, rest in instructions:
        if instruction == "COPY":
            *sources, target = rest.split()
            assert not any(s.startswith("--") for s in sources), rest
            for source in sources:
                pairs.append((source.rstrip("/"), target.rstrip("/")))
    return pairs


def test_dockerfile_copies_what_exists_and_what_the_package_needs():
    instructions, _ = _dockerfile()
    copies = _copies(instructions)
    for source, _ in copies:
        assert source not in (".", "./"), "COPY . would ship .venv and out/: list the paths"
        assert os.path.exists(os.path.join(ROOT, source)), "COPY %s: no such path" % source
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", _setup_text()).group(1)
    packages = {p.split(".")[0] for p in re.findall(r"['\"]([\w.*]+)['\"]", include)}
    assert packages == set(PACKAGES), packages
    assert {"setup.py", *PACKAGES, *DATA_FILES} <= {s for s, _ in copies}


@pytest.mark.parametrize("pipeline", [None, "replay"])
def test_dockerfile_flex_template_env_points_at_copied_files(pipeline):
    instructions, variables = _dockerfile({"PIPELINE": pipeline} if pipeline else None)
    copies = _copies(instructions)

    def repository_path(image_path):
        for source, target in copies:
            if image_path == target or image_path.startswith(target + "/"):
                return os.path.join(ROOT, source + image_path[len(target):])
        raise AssertionError("%s is not copied into the image" % image_path)

    py_file = variables.get("FLEX_TEMPLATE_PYTHON_PY_FILE")
    setup_file = variables.get("FLEX_TEMPLATE_PYTHON_SETUP_FILE")
    assert py_file and setup_file, "ENV FLEX_TEMPLATE_PYTHON_PY_FILE / _SETUP_FILE missing"
    assert "$" not in py_file + setup_file, (py_file, setup_file)
    assert py_file == "%s/pipelines/%s.py" % (variables["WORKDIR"], pipeline or "stream")
    source = repository_path(py_file)
    assert os.path.isfile(source), source
    assert 'if __name__ == "__main__":' in _read(source)
    assert os.path.samefile(repository_path(setup_file), os.path.join(ROOT, "setup.py"))


@pytest.mark.parametrize("command", ["stream", "replay"])
def test_the_launcher_can_run_the_pipeline_as_a_file(command, tmp_path):
    """The Flex launcher runs ``python /template/pipelines/<command>.py --name=value ...``:
    the imports must work from an installed project, whatever the working directory."""
    script = os.path.join(ROOT, "pipelines", command + ".py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, script, "--config=%s" % (tmp_path / "none.yaml"),
                             "--input=%s" % (tmp_path / "none.jsonl")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: config "), result.stderr[-2000:]


_FAKE_RUN = """
import sys
import apache_beam as beam

class Result:
    state = "RUNNING"
    def wait_until_finish(self, duration=None):
        print("WAITED")
        return "DONE"
    def metrics(self):
        raise RuntimeError("no metrics from a fake job")

beam.Pipeline.run = lambda self, test_runner_api="AUTO": Result()
from pipelines.stream import run
sys.exit(run(sys.argv[1:]))
"""


def test_launcher_can_return_without_waiting(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"user_id": "u1", "event": "visit", "ts": "2026-11-01T00:00:00Z"}\n')
    result = subprocess.run([sys.executable, "-c", _FAKE_RUN,
                             "--config=%s" % os.path.join(ROOT, "examples", "config.yaml"),
                             "--input=%s" % events, "--output_dir=%s" % (tmp_path / "out"),
                             "--no_wait_until_finish"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WAITED" not in result.stdout


# -- 4. Dataflow commands -------------------------------------------------------------------

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


# -- 5. Flink commands ----------------------------------------------------------------------

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


# -- 6. secrets and metrics -----------------------------------------------------------------

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
