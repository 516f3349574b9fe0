"""Deployment, what is built and shipped, checked as far as a machine without Docker, Dataflow or a
Flink cluster allows (the commands and template parameters: ``test_deploy_options.py``).

* The sdist that ``--setup_file`` makes (what Dataflow and Flink workers install) holds every
  module of the packages and the sample config; it is built with Beam's own stager.
* ``deploy/dataflow/Dockerfile`` is a Python Flex Template launcher image whose env points at files
  it copies from this repository, and the launcher can run the pipelines from it.

See docs/DEPLOY.md, section 7.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile

try:
    import tomllib
except ImportError:          # Python 3.10: pytest's own TOML reader
    import tomli as tomllib
import apache_beam
import pytest
from packaging.specifiers import SpecifierSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "deploy", "dataflow", "Dockerfile")

#: The packages the workers need (pyproject.toml's packages.find) and the data file they must carry.
# The runtime the workers need; the local Event Hubs endpoint (emulators/) and the bench are not
# installed (test_the_sdist_leaves_out_what_only_a_checkout_runs).
PACKAGES = ("core", "clients", "pipelines", "transforms")
CHECKOUT_ONLY = ("emulators", "bench", "tests")
DATA_FILES = ("examples/config.yaml",)


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


# -- 1. the sdist the workers install -------------------------------------------------------

def _expected_sdist_files():
    expected = set(DATA_FILES) | {"setup.py", "pyproject.toml"}
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
    pyproject.toml must list the missing files: a new package in
    ``[tool.setuptools.packages.find] include`` (and an ``__init__.py`` in every package folder),
    data inside a package in ``[tool.setuptools.package-data]``, data outside the packages in
    ``[tool.setuptools.data-files]``.
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
        assert not missing, "the sdist lacks %s: see this test's docstring for the fix" \
            % missing
        archive.extractall(tmp_path / "unpacked")

    # A worker's `pip install` builds the unpacked sdist (setup.py reads pyproject.toml): it must
    # build every package from what the sdist holds alone.
    unpacked, lib = tmp_path / "unpacked" / top, tmp_path / "lib"
    result = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base",
                             str(tmp_path / "b"), "--build-lib", str(lib)],
                            cwd=unpacked, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    built = {os.path.relpath(os.path.join(d, f), lib).replace(os.sep, "/")
             for d, _, files in os.walk(lib) for f in files}
    # core/, clients/ and transforms/ install inside the package cdp_activation (pyproject.toml).
    modules = {f if f.split("/")[0] == "pipelines" else "cdp_activation/" + f
               for f in _expected_sdist_files() if f.endswith(".py") and f != "setup.py"}
    assert not modules - built, sorted(modules - built)
    assert {f.split("/")[0] for f in built} == {"cdp_activation", "pipelines"}, sorted(built)[:20]
    # What only a checkout runs (the local endpoint, the bench, the tests) is not installed.
    assert not {f for f in built if f.split("/")[0] in CHECKOUT_ONLY}, sorted(built)[:20]


# -- 2. the Flex Template Dockerfile --------------------------------------------------------

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


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def _requirement(name):
    """The version specifier pyproject.toml gives dependency ``name``."""
    for requirement in _pyproject()["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement)
        if match.group(1).lower() == name:
            return match.group(2)
    raise AssertionError("pyproject.toml does not depend on %s" % name)


#: Import name of each runtime dependency whose distribution name differs from it.
_IMPORT_NAMES = {"apache-beam": "apache_beam", "azure-eventhub": "azure.eventhub",
                 "azure-storage-blob": "azure.storage.blob", "pyyaml": "yaml",
                 "jsonnet": "_jsonnet"}


def test_every_declared_dependency_is_imported_by_the_installed_packages():
    imported = set()
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    tree = ast.parse(_read(os.path.join(directory, name)))
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Import):
                            imported.update(alias.name for alias in node.names)
                        elif isinstance(node, ast.ImportFrom) and node.level == 0:
                            imported.add(node.module)
    unused = []
    for requirement in _pyproject()["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        module = _IMPORT_NAMES.get(name, name)
        if not any(m == module or m.startswith(module + ".") for m in imported):
            unused.append(name)
    assert not unused, "declared in pyproject.toml, imported by no installed module: %s" % unused


def test_dockerfile_uses_the_python_flex_template_launcher_base():
    instructions, _ = _dockerfile()
    froms = [rest for instruction, rest in instructions if instruction == "FROM"]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"gcr\.io/dataflow-templates-base/python3(\d+)-template-launcher-base"
                         r"(:[\w.-]+|@sha256:[0-9a-f]{64})?", froms[0])
    assert match, froms[0]
    requires = _pyproject()["project"]["requires-python"]
    assert "3.%s" % match.group(1) in SpecifierSet(requires), (froms[0], requires)
    assert instructions[-1] == ("ENTRYPOINT", '["/opt/google/dataflow/python_template_launcher"]')


def test_dockerfile_installs_the_tested_beam_and_the_project():
    instructions, variables = _dockerfile()
    assert variables["BEAM_VERSION"] == apache_beam.__version__, \
        "the image launches with Beam %s, the tests run %s" % (variables["BEAM_VERSION"],
                                                              apache_beam.__version__)
    spec = _requirement("apache-beam")
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
    setuptools = _pyproject()["tool"]["setuptools"]
    folders = {setuptools["package-dir"].get(p, p).split(".")[0] for p in setuptools["packages"]}
    assert folders == set(PACKAGES), folders
    assert {"setup.py", "pyproject.toml", *PACKAGES, *DATA_FILES} <= {s for s, _ in copies}


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
