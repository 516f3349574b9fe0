"""Command lines as users type them: unknown options are errors, --help lists every option."""
import argparse
import os
import shutil
import subprocess

import pytest

from tests.commands import EVENTHUB_WORK, FREQUENT_BUYERS, ROOT, job_config, run_module

CONFIG = job_config([FREQUENT_BUYERS], [EVENTHUB_WORK])
EVENT = '{"user_id": "u1", "event": "purchase", "ts": "2026-11-20T10:00:00Z"}\n'
#: Every command with a main, as ``python -m`` runs it.
COMMANDS = ("pipelines.stream", "pipelines.replay", "pipelines.validate", "pipelines.explain",
            "pipelines.read_eventhub", "emulators.eventhubs", "emulators.run_with_local_eventhubs")


def run(module, *args, cwd=ROOT):
    return run_module(module, *args, cwd=cwd)


@pytest.fixture
def job(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "events.jsonl").write_text(EVENT)
    return tmp_path


def test_a_misspelt_option_is_an_error_that_names_it_and_nothing_is_written(job):
    # The example: --output-dir and --strat were ignored; ./out was written, exit 0.
    workdir = job / "cwd"
    workdir.mkdir()
    result = run_module("pipelines.replay", "--config", job / "config.yaml", "--input",
                        job / "events.jsonl", "--output-dir", job / "x", "--strat", "2026-11-20",
                        cwd=workdir, env={"PYTHONPATH": ROOT})
    assert result.returncode == 2
    assert result.stderr == "error: unknown option --output-dir (did you mean --output_dir?)\n"
    assert not (workdir / "out").exists() and not (job / "x").exists()
    result = run("pipelines.replay", "--config", str(job / "config.yaml"), "--input",
                 str(job / "events.jsonl"), "--output_dir", str(job / "x"), "--strat", "2026-11-20")
    assert (result.returncode, result.stderr) == (
        2, "error: unknown option --strat (did you mean --start?)\n")
    assert not (job / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["--start", "2026-11-20"], "unknown option --start (it is an option of pipelines.replay)"),
    (["--runer=DirectRunner"], "unknown option --runer (did you mean --runner?)"),
    (["--progress_seconds", "soon"], "--progress_seconds: invalid float value: 'soon'"),
    # The option of a process pool the project no longer has: unknown, as any other.
    (["--worker_processes", "0"], "unknown option --worker_processes"),
    (["stray.jsonl"], "unexpected argument 'stray.jsonl': every value follows its option, e.g. "
                      "--input stray.jsonl (see --help)"),
])
def test_stream_refuses_what_it_would_ignore(job, argv, message):
    result = run("pipelines.stream", "--config", str(job / "config.yaml"), "--input",
                 str(job / "events.jsonl"), "--output_dir", str(job / "o"), *argv)
    assert (result.returncode, result.stderr) == (2, "error: %s\n" % message)
    assert not (job / "o").exists()


@pytest.mark.parametrize("module, argv, message", [
    ("pipelines.validate", ["--jsn"], "unknown option --jsn (did you mean --json?)"),
    ("pipelines.explain", ["--user", "u1", "--inptu", "x"],
     "unknown option --inptu (did you mean --input?)"),
    ("pipelines.explain", ["--input", "x"], "--user is required (see --help)"),
    ("pipelines.read_eventhub", ["--timeot", "1"], "unknown option --timeot (did you mean --timeout?)"),
    ("emulators.eventhubs", ["--prot", "0"], "unknown option --prot (did you mean --port?)"),
    ("emulators.run_with_local_eventhubs", ["--input", "x", "--output-dir", "o"],
     "unknown option --output-dir (did you mean --output_dir?)"),
])
def test_other_commands_refuse_unknown_options(job, module, argv, message):
    config = [] if module.startswith(("pipelines.read", "emulators.eventhubs")) else [
        "--config", str(job / "config.yaml")]
    result = run(module, *(config + argv))
    assert (result.returncode, result.stderr) == (2, "error: %s\n" % message)


def test_beam_options_still_pass(job):
    # Beam's own options are not this project's: they pass through to Beam. The portable runner
    # with LOOPBACK runs here; --parallelism and --streaming are parsed (Flink's and streaming's).
    out = job / "o"
    result = run("pipelines.stream", "--config", str(job / "config.yaml"), "--input",
                 str(job / "events.jsonl"), "--output_dir", str(out), "--runner=PortableRunner",
                 "--job_endpoint=embed", "--environment_type=LOOPBACK", "--parallelism", "2")
    assert result.returncode == 0, result.stderr
    assert (out / "eventhub" / "w-eh.jsonl").exists()
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipelines.cli import beam_parse_known, check_pipeline_arguments
    from pipelines.options import COMMAND_OPTIONS
    argv = ["--runner=FlinkRunner", "--streaming", "--parallelism", "4", "--flink_master=[auto]",
            "--environment_type", "LOOPBACK", "--project", "p", "--temp_location", "gs://b/t"]
    check_pipeline_arguments(argv, "pipelines.stream", COMMAND_OPTIONS)  # raises if refused
    assert beam_parse_known(argv)[1] == []
    assert PipelineOptions(argv).get_all_options()["parallelism"] == 4


def _parser_of(module):
    """The ``argparse`` parser that declares the command's own options (its options classes for
    the pipelines), or None for the commands whose parser is built inside ``main``."""
    import importlib
    from pipelines.options import COMMAND_OPTIONS
    if module in COMMAND_OPTIONS:
        parser = argparse.ArgumentParser(add_help=False)
        for cls in COMMAND_OPTIONS[module]:
            cls._add_argparse_args(parser)  # pylint: disable=protected-access
        return parser
    if module == "emulators.run_with_local_eventhubs":
        return _parser_of("pipelines.stream")
    mod = importlib.import_module(module)
    return mod.parser() if hasattr(mod, "parser") else None


def _options_of(module):
    """``{option: its help text, or None when the parser is not reachable}`` the command
    declares."""
    parser = _parser_of(module)
    if parser is None:  # emulators.eventhubs builds its parser in main()
        assert module == "emulators.eventhubs", module
        return dict.fromkeys(("--host", "--port", "--hub", "--partitions", "--key"))
    return {a.option_strings[0]: a.help for a in parser._actions  # pylint: disable=protected-access
            if a.option_strings and a.option_strings[0] != "-h"}


@pytest.mark.parametrize("module", [c for c in COMMANDS if c.startswith("pipelines.")])
def test_every_option_declares_one_line_of_help_with_its_own_example(module):
    # Issue 18 point 2, checked where the options are declared: each has help, on one line, that
    # ends with an example of the option itself ("e.g. --start 2026-11-20"), so --help shows
    # what to type.
    parser = _parser_of(module)
    actions = [a for a in parser._actions if a.option_strings]  # pylint: disable=protected-access
    assert actions
    for action in actions:
        name = action.option_strings[0]
        assert action.help and action.help.strip(), "%s %s has no help" % (module, name)
        assert "\n" not in action.help, "%s %s: help of more than one line" % (module, name)
        assert any("e.g. " + s in action.help for s in action.option_strings), (
            "%s %s: no example of the option in its help: %r" % (module, name, action.help))


@pytest.mark.parametrize("module", COMMANDS)
def test_help_lists_every_option_on_one_line_with_an_example(module):
    result = run(module, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: ") and "Traceback" not in result.stderr
    lines = text.splitlines()
    for option, help_text in _options_of(module).items():
        at = next((i for i, l in enumerate(lines) if l.lstrip().startswith(option + " ")
                   or l.strip() == option), None)
        assert at is not None, "%s --help does not list %s" % (module, option)
        # The help follows the option on its line, or alone on the next when the option and
        # its value are too wide for the column.
        entry = lines[at] if lines[at].strip() != option and "  " in lines[at].strip() \
            else lines[at] + " " + lines[at + 1]
        assert "e.g. " + option in entry, entry
        if help_text is not None:
            assert " ".join(help_text.split()) in " ".join(entry.split()), (option, entry)
    examples = lines[lines.index("Examples:") + 1:]
    assert any(e.strip().startswith(("python -m " + module, "EVENTHUB_CONNECTION_STRING="))
               for e in examples), examples


def test_help_lists_the_common_beam_options_that_beam_knows():
    from pipelines.cli import BEAM_OPTIONS, beam_parse_known
    known, _ = beam_parse_known([])
    for name, help_text in BEAM_OPTIONS:
        assert name.split()[0] in known, name
        assert "e.g. " + name.split()[0] in help_text, name
    text = run("pipelines.stream", "--help").stdout
    assert all(name in text for name, _ in BEAM_OPTIONS)


def test_run_local_help_prints_help_and_touches_nothing(tmp_path):
    # A copy of the project without .venv and sample data, and an out/ of an earlier run: --help
    # must not create the one (PYTHON=false would fail if it tried), generate the other or empty out/.
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".tools", ".git", "out",
                                                               "events.jsonl", "__pycache__"))
    (copy / "out").mkdir()
    (copy / "out" / "keep.txt").write_text("an earlier run\n")
    before = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    for flag in ("--help", "-h"):
        result = subprocess.run(["bash", str(copy / "run_local.sh"), flag], cwd=str(tmp_path),
                                capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, PYTHON="false"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: ./run_local.sh") and "--eventhub local" in result.stdout
        assert result.stderr == ""
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == before
    assert (copy / "out" / "keep.txt").read_text() == "an earlier run\n"
