"""The project's top-level package names (``cdp_activation``, holding core, clients and
transforms, and ``pipelines``) are its own in the environment it runs in: no other installed distribution provides one of them, and a
command refuses to run, with one line, where one does (docs/decisions/0005-package-names.md)."""
import os
import subprocess
import sys

import pytest

try:
    import tomllib
except ImportError:          # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

from pipelines.cli import TOP_LEVEL_NAMES, name_clashes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_guarded_names_are_the_packages_pyproject_installs():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        packages = tomllib.load(fh)["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == set(TOP_LEVEL_NAMES)


def test_no_folder_of_the_repository_is_installed_under_its_own_name_but_pipelines():
    """core, clients and transforms are importable only as ``cdp_activation.*``: a stray
    ``import core.x`` would load a second copy of the module (or another distribution's)."""
    from importlib.metadata import packages_distributions
    ours = {name for name, dists in packages_distributions().items()
            if "cdp-activation" in {d.lower().replace("_", "-") for d in dists}}
    assert ours == set(TOP_LEVEL_NAMES)


def test_no_other_installed_distribution_provides_the_project_names():
    assert name_clashes() == {}


def test_clashes_name_the_other_distributions_only():
    providers = {"cdp_activation": ["cdp-activation", "other-core"], "core": ["other-core"],
                 "pipelines": ["Some.Pipelines", "cdp-activation"], "numpy": ["numpy"]}
    assert name_clashes(providers) == {"cdp_activation": ["other-core"],
                                       "pipelines": ["Some.Pipelines"]}


def _fake_distribution(site, name, top_level):
    """An installed distribution as pip leaves one: a ``.dist-info`` with its top-level names."""
    info = site / ("%s-1.0.dist-info" % name.replace("-", "_"))
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
    (info / "top_level.txt").write_text(top_level + "\n")


CONFIG = os.path.join(ROOT, "examples", "config.yaml")


@pytest.mark.parametrize("argv", [
    ["pipelines.validate", "--config", CONFIG],                         # argparse commands
    ["pipelines.replay", "--config", CONFIG, "--input", CONFIG],        # Beam option commands
])
def test_a_command_refuses_to_run_beside_a_distribution_with_one_of_the_names(tmp_path, argv):
    site = tmp_path / "site"
    _fake_distribution(site, "other-core", "cdp_activation")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(site)]))
    result = subprocess.run([sys.executable, "-m"] + argv, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("error: the installed distribution other-core also provides the "
                             "top-level package 'cdp_activation'; install this project in a "
                             "virtualenv of its own\n")


def test_validate_runs_where_the_names_are_the_project_s_own():
    result = subprocess.run([sys.executable, "-m", "pipelines.validate", "--config", CONFIG],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
