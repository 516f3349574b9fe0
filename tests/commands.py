"""Running the project's commands as a user runs them, and the job-config pieces the command
tests share."""
import json
import os
import signal
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
#: The project's virtualenv interpreter when there is one (what ./run_local.sh runs), else this one.
PY = _VENV_PY if os.path.exists(_VENV_PY) else sys.executable

#: The package the folders core/, clients/ and transforms/ install as (pyproject.toml).
PACKAGE = "cdp_activation"


def require_flink_job_server():
    """Fails the calling test in one line when the Flink job server (scripts/install_runners.sh
    flink, which the test command runs) is not installed."""
    import pytest
    from pipelines.runners import INSTALL_FLINK, flink_job_server_jar
    if not os.path.exists(flink_job_server_jar()):
        pytest.fail("the Flink job server is not installed: run %s" % INSTALL_FLINK, pytrace=False)


def project_module(module):
    """A module name as the repository's folders spell it: ``cdp_activation.core.engine`` is
    ``core.engine``; any other name is returned unchanged."""
    return module[len(PACKAGE) + 1:] if module.startswith(PACKAGE + ".") else module


ACCOUNT = "account: {name: acme, aid: 1234}\n"
#: Audience lines: three purchases within 7 days; a trait threshold; a trait value.
FREQUENT_BUYERS = ("  - {id: fb, slug: frequent_buyers, "
                   "condition: {event: purchase, within: 7d, min_count: 3}}\n")
HIGH_VALUE = "  - {id: hv, slug: high_value, condition: {trait: ltv, op: gte, value: 500}}\n"
GOLD = "  - {id: gold, slug: gold, condition: {trait: tier, op: eq, value: gold}}\n"
#: The Event Hub work with the local sink (no connection string), sending users' emails.
EVENTHUB_WORK = "  - {id: w-eh, workflow: eventhub_audience_export, config: {user_fields: [email]}}\n"


def job_config(audiences, works):
    """A job config's YAML from audience and work lines (``FREQUENT_BUYERS``, ``EVENTHUB_WORK``...)."""
    return ACCOUNT + "audiences:\n" + "".join(audiences) + "works:\n" + "".join(works)


def write_job(directory, config, lines):
    """Writes ``directory``/config.yaml (``config``: a string as it is, a dict as YAML) and
    events.jsonl (``lines``: strings as they are, dicts as JSON); returns their two paths."""
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, "config.yaml")
    input_path = os.path.join(directory, "events.jsonl")
    with open(config_path, "w", encoding="utf-8") as fh:
        if isinstance(config, str):
            fh.write(config)
        else:
            yaml.safe_dump(config, fh, sort_keys=False, allow_unicode=True)
    with open(input_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
                 + "\n")
    return config_path, input_path


def run_module(module, *args, env=None, cwd=ROOT, timeout=300):
    """``python -m MODULE ARGS`` to its end, output captured as text; ``env`` adds to this
    process's environment."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=str(cwd),
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def interrupt(proc, grace_seconds=60):
    """Ctrl-C for a command started with its output piped: SIGINT, then its ``(stdout, stderr)``
    once it ends; killed if it has not ended after ``grace_seconds`` (a bound on a hang)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def run_pipeline(command, job, output, *extra, source=None, env=None, timeout=600):
    """``python -m pipelines.COMMAND`` on ``job``'s config.yaml and events.jsonl (or ``source``)
    with ``--output_dir job/output``."""
    return run_module("pipelines." + command, "--config", job / "config.yaml", "--input",
                      job / "events.jsonl" if source is None else source, "--output_dir",
                      job / output, *extra, env=env, timeout=timeout)
