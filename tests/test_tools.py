"""validate, explain, and replay over Parquet, as a user runs them."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.commands import run_module

CONFIG = """
account: {name: acme, aid: 1234}
audiences:
  - {id: fb1, slug: frequent_buyers, condition: {event: purchase, within: 7d, min_count: 3}}
  - slug: vip
    condition: {and: [{audience: frequent_buyers}, {trait: tier, op: eq, value: gold}]}
works:
  - id: w-eh
    workflow: eventhub_audience_export
    config: {connection_string: "${EH_CS}", user_fields: [email]}
  - id: w-hook
    workflow: webhook_system_events
    config: {system_event_type: failed, headers: {Authorization: "Bearer ${TOKEN}"}}
"""
EVENTS = [
    {"user_id": "u1", "event": "visit", "ts": "2026-11-01T00:00:00Z", "traits": {"tier": "gold", "email": "a@x"}},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-02T00:00:00Z", "event_id": "p1"},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-03T00:00:00Z", "event_id": "p2"},
    {"user_id": "u1", "event": "purchase", "ts": "2026-11-04T00:00:00Z", "event_id": "p3"},
    {"user_id": "u2", "event": "purchase", "ts": "2026-11-04T00:00:00Z", "event_id": "p4"},
]
ENV = {"EH_CS": "Endpoint=sb://x.example/;SharedAccessKeyName=k;SharedAccessKey=S3cr3tKeyValue==",
       "TOKEN": "tok-abcdef-123456"}


def run(module, *args, env=None):
    return run_module(module, *args, env=env)


@pytest.fixture
def job(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in EVENTS) + "\n")
    return tmp_path


def test_validate_prints_the_plan_with_secrets_masked(job):
    result = run("pipelines.validate", "--config", str(job / "config.yaml"), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "frequent_buyers" in result.stdout and "windows 7d" in result.stdout
    assert "uses frequent_buyers" in result.stdout and "config is valid" in result.stdout
    plan = run("pipelines.validate", "--config", str(job / "config.yaml"), "--json", env=ENV)
    data = json.loads(plan.stdout)
    assert data["works"][0]["destination"] == "Event Hubs"
    assert data["works"][0]["config"]["connection_string"] == "****"
    for secret in ("S3cr3tKeyValue", "tok-abcdef-123456"):
        assert secret not in result.stdout + plan.stdout


def test_validate_rejects_a_bad_config_with_the_path(job):
    (job / "bad.yaml").write_text(CONFIG.replace("within: 7d", "within: 7 days"))
    result = run("pipelines.validate", "--config", str(job / "bad.yaml"), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: audiences[0].condition.within: a duration is a positive integer "
                                     "and a unit s, m, h, d or w, e.g. 7d; got '7 days'")


def test_explain_shows_why_the_user_exited(job):
    result = run("pipelines.explain", "--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
                 "--user", "u1", env=ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    exit_at = lines.index("2026-11-09T00:00:00Z  EXIT  frequent_buyers")
    assert lines[exit_at + 1].strip() == "* false purchase in the last 7d: 2, needs >= 3"
    assert "2026-11-04T00:00:00Z  ENTER vip" in lines
    assert run("pipelines.explain", "--config", str(job / "config.yaml"), "--input", str(job / "events.jsonl"),
               "--user", "nobody", env=ENV).returncode == 2


def test_replay_reads_parquet_like_json_lines(job):
    records = [dict(e) for e in EVENTS]
    for r in records:  # Parquet needs one type per column: keep traits as a JSON-compatible struct
        r.setdefault("event_id", None)
        r.setdefault("traits", None)
    table = pa.Table.from_pylist(records)
    pq.write_table(table, str(job / "events.parquet"))
    local = dict(ENV, EH_CS="")
    outputs = []
    for name, source in (("jsonl", "events.jsonl"), ("parquet", "events.parquet")):
        # An as-of after the delayed exit: the run may state it (CONTRACT section 1).
        result = run("pipelines.replay", "--config", str(job / "config.yaml"), "--input", str(job / source),
                     "--output_dir", str(job / name), "--as_of", "2026-11-30", env=local)
        assert result.returncode == 0, result.stderr
        outputs.append((job / name / "eventhub" / "w-eh.jsonl").read_text())
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 2  # enter and exit (day 4, day 9)


def test_validate_reports_unknown_keys_and_refused_destinations_like_the_run(job):
    cases = [
        (CONFIG.replace("user_fields: [email]", "user_fields: [email], existing_user: true"),
         "error: works[0].config.existing_user: unknown key (did you mean 'existing_users'?)"),
        (CONFIG.replace("within: 7d", "whithin: 7d"),
         "error: audiences[0].condition.whithin: unknown key (did you mean 'within'?)"),
        (CONFIG.replace("audiences:", "audience:"),
         "error: audience: unknown key (did you mean 'audiences'?)"),
        (CONFIG.replace("system_event_type: failed,",
                        "system_event_type: failed, webhook_url: 'http://127.0.0.1:9/x',"),
         "error: works[1].config.webhook_url: the job refuses to connect to 127.0.0.1, a loopback "
         "address; set allow_private_network: true in this work's config to allow it (local runs "
         "and tests only)"),
        (CONFIG.replace("system_event_type: failed,",
                        "system_event_type: failed, webhook_url: 'https://hooks.example.com:0/x',"),
         "error: works[1].config.webhook_url: not a usable URL: the port is not a number from 1 "
         "to 65535; write it as https://host[:port]/path"),
    ]
    for text, expected in cases:
        (job / "bad.yaml").write_text(text)
        result = run("pipelines.validate", "--config", str(job / "bad.yaml"), env=ENV)
        assert result.returncode == 2, (expected, result.stdout)
        assert result.stderr.strip() == expected
        assert "config is valid" not in result.stdout
    allowed = CONFIG.replace("system_event_type: failed,", "system_event_type: failed, webhook_url: "
                             "'http://127.0.0.1:9/x', allow_private_network: true,")
    (job / "ok.yaml").write_text(allowed)
    result = run("pipelines.validate", "--config", str(job / "ok.yaml"), env=ENV)
    assert result.returncode == 0 and "config is valid" in result.stdout, result.stderr


INACTIVE = CONFIG.replace("works:", """  - slug: dormant
    condition: {not: {event: "*", within: 3d}}
  - slug: never_bought
    condition: {not: {event: purchase}}
works:""")


def test_explain_shows_not_and_marks_the_cause_of_every_transition(job):
    (job / "inactive.yaml").write_text(INACTIVE)
    result = run("pipelines.explain", "--config", str(job / "inactive.yaml"), "--input",
                 str(job / "events.jsonl"), "--user", "u1", env=ENV)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # The first transition: the user's first event, with nothing before it.
    assert ("2026-11-01T00:00:00Z  ENTER never_bought\n"
            "        true  not\n"
            "        false   purchase ever: 0, needs >= 1\n"
            "      (the user's first event: before it a user is in no audience)\n") in text
    assert ("2026-11-02T00:00:00Z  EXIT  never_bought\n"
            "      * false not\n"
            "      * true    purchase ever: 1, needs >= 1\n") in text
    # The first transition of frequent_buyers is marked too.
    assert ("2026-11-04T00:00:00Z  ENTER frequent_buyers\n"
            "      * true  purchase in the last 7d: 3, needs >= 3\n") in text
    assert ("2026-11-04T00:00:00Z  ENTER vip\n"
            "      * true  and\n"
            "      * true    member of frequent_buyers\n"
            "        true    trait tier eq \"gold\" (is \"gold\")\n") in text
    # "*" counts every name: no event at all from the last purchase (day 4) + 3 days.
    assert ("2026-11-07T00:00:00Z  ENTER dormant\n"
            "      * true  not\n"
            "      * false   any event in the last 3d: 0, needs >= 1\n") in text


def test_explain_hints_at_the_kind_of_id(job):
    with open(job / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"anonymous_id": "anon-7f3a", "event": "visit",
                             "ts": "2026-11-05T00:00:00Z"}) + "\n")
    result = run("pipelines.explain", "--config", str(job / "config.yaml"), "--input",
                 str(job / "events.jsonl"), "--user", "anon-7f3a", env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: no events of user_id anon-7f3a in %s; anon-7f3a is an " \
                                    "anonymous_id there: add --anonymous" % (job / "events.jsonl")
    result = run("pipelines.explain", "--config", str(job / "config.yaml"), "--input",
                 str(job / "events.jsonl"), "--user", "anon-7f3a", "--anonymous", env=ENV)
    assert result.returncode == 0 and "event visit" in result.stdout, result.stderr
    result = run("pipelines.explain", "--config", str(job / "config.yaml"), "--input",
                 str(job / "events.jsonl"), "--user", "u1", "--anonymous", env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("u1 is a user_id there: drop --anonymous")
