"""The two commands as a user runs them: exit codes, one-line errors, outputs, no secrets."""
import json
import pytest

from tests.commands import (EVENTHUB_WORK, FREQUENT_BUYERS, GOLD, job_config, run_module,
                            write_job)

CONFIG = job_config([FREQUENT_BUYERS, GOLD], [EVENTHUB_WORK])
EVENTS = [
    {"user_id": "u1", "event": "visit", "ts": "2026-11-01T00:00:00Z", "traits": {"tier": "gold", "email": "a@x"}},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-02T00:00:00Z"},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-03T00:00:00Z"},
    {"user_id": "u1", "event": "purchase", "ts": 1793750400, "event_id": "p3"},
    {"user_id": "u1", "event": "purchase", "ts": 1793750400, "event_id": "p3", "received_at": 1793754000},
    {"anonymous_id": "a1", "event": "purchase", "ts": "2026-11-02T00:00:00Z"},
]


def run(command, *args, env=None):
    return run_module("pipelines." + command, *args, env=env)


@pytest.fixture
def job(tmp_path):
    write_job(str(tmp_path), CONFIG, EVENTS + ["not json", '{"user_id": "u2"}'])
    return tmp_path


@pytest.mark.parametrize("command", ["stream", "replay"])
def test_run_writes_messages_dead_letters_and_summary(job, command):
    out = job / "out"
    result = run(command, "--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
                 "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    messages = [json.loads(l) for l in (out / "eventhub" / "w-eh.jsonl").read_text().splitlines()]
    assert [(m["timestamp"], [s["slug"] + ":" + s["event"] for s in m["data"]["segment_events"]])
            for m in messages] == [
        ("2026-11-01T00:00:00Z", ["gold:enter"]),
        ("2026-11-04T00:00:00Z", ["frequent_buyers:enter"])]
    assert messages[0]["data"] == {"_created": "2026-11-01T00:00:00Z", "_modified": "2026-11-01T00:00:00Z",
                                   "email": "a@x", "user_id": "u1",
                                   "segment_events": messages[0]["data"]["segment_events"]}
    dead = [json.loads(l) for l in (out / "deadletter" / "input.jsonl").read_text().splitlines()]
    assert [d["raw"] for d in dead] == ["not json", '{"user_id": "u2"}']
    assert all(d["error"] and d["source"].endswith((":7", ":8")) for d in dead)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["records_read"], summary["deadlettered"], summary["duplicates"]) == (8, 2, 1)
    # The exit of 2026-11-09 lies after the run's as-of time (the latest received_at read,
    # 2026-11-04T01:00:00Z): pending, not sent.
    assert summary["as_of"] == "2026-11-04T01:00:00Z"
    assert summary["pending_wakeups"] == 1
    assert summary["audiences"]["frequent_buyers"] == {"enters": 1, "exits": 0}
    assert summary["works"]["w-eh"]["messages"] == 2
    assert "Summary" in result.stdout and "frequent_buyers" in result.stdout


def test_bad_config_is_one_line_naming_the_path(job):
    (job / "bad.yaml").write_text(CONFIG.replace("min_count: 3", "min_count: -3"))
    result = run("stream", "--config", str(job / "bad.yaml"), "--input", str(job / "events.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        "error: audiences[0].condition.min_count: must be a non-negative integer"
    assert "Traceback" not in result.stderr


def test_missing_input_is_one_line(job):
    result = run("replay", "--config", str(job / "config.yaml"), "--input", str(job / "nope*.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: input ")
    assert "no file matches" in result.stderr


def test_unset_variable_names_it_and_set_secret_never_printed(job):
    secret = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWs="
    (job / "cs.yaml").write_text(CONFIG.replace(
        "config: {user_fields: [email]}",
        "config: {user_fields: [email], connection_string: '${EH_CS}'}"))
    result = run("stream", "--config", str(job / "cs.yaml"), "--input", str(job / "events.jsonl"))
    assert result.returncode == 2
    assert "environment variable EH_CS is not set" in result.stderr
    # With the variable set to an endpoint nobody listens on, the run fails fast, without the key.
    cs = "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=k;SharedAccessKey=%s;EntityPath=h;UseDevelopmentEmulator=true" % secret
    result = run("stream", "--config", str(job / "cs.yaml"), "--input", str(job / "events.jsonl"),
                 "--output_dir", str(job / "o"), "--verbose", env={"EH_CS": cs})
    assert result.returncode != 0
    assert secret not in result.stdout + result.stderr
    for path in (job / "o").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace")


def test_replay_time_range(job):
    out = job / "out"
    result = run("replay", "--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
                 "--output_dir", str(out), "--start", "2026-11-02T00:00:00Z", "--end", "2026-11-04T00:00:00Z")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outside_time_range"] == 3  # the visit and both copies of the day-4 purchase


@pytest.mark.portable
def test_portable_runner_gives_the_direct_runner_output(job):
    outputs = {}
    for name, extra in (("direct", []), ("portable", ["--runner=PortableRunner", "--job_endpoint=embed",
                                                      "--environment_type=LOOPBACK"])):
        out = job / name
        result = run("stream", "--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
                     "--output_dir", str(out), *extra)
        assert result.returncode == 0, result.stderr
        outputs[name] = (out / "eventhub" / "w-eh.jsonl").read_text()
    assert outputs["direct"] == outputs["portable"] and outputs["direct"].count("\n") == 2


@pytest.mark.slow
def test_streaming_mode_gives_the_replay_output_on_random_data(tmp_path):
    # --streaming takes the per-wake timer path (no batch shortcut) with microsecond event times.
    import yaml
    from tests.datagen import generate
    config, lines = generate(5, n_users=60, days=20)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    outputs = {}
    for name, command, extra in (("streaming", "stream", ["--streaming"]), ("replay", "replay", [])):
        result = run(command, "--config", str(tmp_path / "config.yaml"), "--input", str(tmp_path / "events.jsonl"),
                     "--output_dir", str(tmp_path / name), *extra)
        assert result.returncode == 0, result.stderr
        outputs[name] = {p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                         for p in (tmp_path / name).rglob("*")
                         if p.is_file() and p.parent.name in ("eventhub", "deadletter")
                         or (p.is_file() and "blob" in p.parts and "_state" not in p.parts)}
    assert outputs["streaming"] == outputs["replay"]
    assert any(k.startswith("eventhub/") and v for k, v in outputs["replay"].items())


def test_importing_the_options_does_not_break_other_pipelines():
    # Beam parses every registered PipelineOptions class for every pipeline in the process.
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to
    import pipelines.options  # noqa: F401
    with beam.Pipeline() as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2), equal_to([2, 4]))


def test_missing_config_is_one_line(job):
    result = run("stream", "--input", str(job / "events.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --config is required (see --help)"


# -- one-line errors before the pipeline starts (issue 18, points 1, 4, 5) ---------------------

def last_error_line(result):
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["stream", "replay"])
def test_a_directory_as_input_is_one_line(job, command):
    result = run(command, "--config", str(job / "config.yaml"), "--input", str(job),
                 "--output_dir", str(job / "out"))
    assert result.returncode == 2
    assert last_error_line(result) == "error: input %s: is a directory; give a file or a glob, " \
                                      "e.g. %s" % (job, job / "*.jsonl")
    assert not (job / "out").exists()


@pytest.mark.parametrize("text,expected", [
    (CONFIG.replace("works:\n", "works:\n\t"),
     "not valid YAML: line 6, column 1: found character '\\t' that cannot start any token "
     "(while scanning for the next token); YAML indents with spaces, not tabs"),
    (CONFIG.replace("condition: {trait: tier, op: eq, value: gold}}",
                    "condition: {trait: tier, op: eq, value: gold}"),
     "not valid YAML: line 5, column 1: expected ',' or '}', but got '<scalar>' "
     "(while parsing a flow mapping that starts at line 4, column 5)"),
])
def test_yaml_syntax_error_is_one_line_with_line_and_column(job, text, expected):
    (job / "bad.yaml").write_text(text)
    result = run("replay", "--config", str(job / "bad.yaml"), "--input", str(job / "events.jsonl"))
    assert result.returncode == 2
    assert last_error_line(result) == "error: config %s: %s" % (job / "bad.yaml", expected)


@pytest.mark.parametrize("old,new,expected", [
    ("audiences:", "audience:", "error: audience: unknown key (did you mean 'audiences'?)"),
    ("config: {user_fields: [email]}", "config: {user_fields: [email], existing_user: true}",
     "error: works[0].config.existing_user: unknown key (did you mean 'existing_users'?)"),
    ("within: 7d, min_count: 3", "within: 7d, min_cout: 3",
     "error: audiences[0].condition.min_cout: unknown key (did you mean 'min_count'?)"),
])
def test_unknown_keys_fail_the_run_in_one_line(job, old, new, expected):
    (job / "bad.yaml").write_text(CONFIG.replace(old, new))
    result = run("stream", "--config", str(job / "bad.yaml"), "--input", str(job / "events.jsonl"),
                 "--output_dir", str(job / "out"))
    assert result.returncode == 2
    assert last_error_line(result) == expected
    assert not (job / "out").exists()


def test_unknown_verb_fails_the_run_naming_the_value_and_the_list(job):
    (job / "bad.yaml").write_text(CONFIG + "  - {id: w-hook, workflow: webhook_system_events, "
                                           "config: {system_event_type: exploded}}\n")
    result = run("replay", "--config", str(job / "bad.yaml"), "--input", str(job / "events.jsonl"))
    assert result.returncode == 2
    assert last_error_line(result) == (
        "error: works[1].config.system_event_type: unknown verb 'exploded'; one of completed, "
        "created, deleted, failed, started, synccomplete, synced, syncing, updated")


@pytest.mark.parametrize("command", ["stream", "replay"])
def test_a_webhook_to_a_private_address_fails_the_run_before_any_data_moves(job, command):
    (job / "hook.yaml").write_text(CONFIG + "  - {id: w-hook, workflow: webhook_system_events, "
                                            "config: {webhook_url: 'http://localhost:9/hook'}}\n")
    result = run(command, "--config", str(job / "hook.yaml"), "--input", str(job / "events.jsonl"),
                 "--output_dir", str(job / "out"))
    assert result.returncode == 2
    assert last_error_line(result) == (
        "error: works[1].config.webhook_url: the job refuses to connect to localhost (127.0.0.1), "
        "a loopback address; set allow_private_network: true in this work's config to allow it "
        "(local runs and tests only)")
    assert not (job / "out").exists()
