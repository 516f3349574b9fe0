"""Computed traits in the commands: validate's plan, explain's trees and values at each
transition, and the run's report. Each runs the command as a user does, on a small job."""
import json
import os
import subprocess
import sys

import yaml

from cdp_activation.core.report import build_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {
    "account": {"name": "acme", "aid": 1},
    "computed_traits": {
        "spend_3d": {"op": "sum", "event": "purchase", "property": "price", "within": "3d"},
        "orders": {"op": "count", "event": "purchase"},
        "avg_price": {"op": "avg", "event": "purchase", "property": "price"}},
    "audiences": [{"id": "big", "slug": "big",
                   "condition": {"computed": "spend_3d", "op": "gte", "value": 100}}],
    "works": [{"id": "w-eh", "workflow": "eventhub_audience_export",
               "config": {"computed_fields": ["spend_3d", "orders"]}}],
}
EVENTS = [
    {"event_id": "e1", "user_id": "u1", "event": "purchase", "ts": "2026-11-01T10:00:00Z",
     "properties": {"price": 60}},
    {"event_id": "e2", "user_id": "u1", "event": "purchase", "ts": "2026-11-02T10:00:00Z",
     "properties": {"price": 50.5}},
    {"event_id": "e3", "user_id": "u1", "event": "login", "ts": "2026-11-06T10:00:00Z"},
]


def _write(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    return str(config), str(events)


def _run(*args):
    return subprocess.run([sys.executable, "-m"] + list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_validate_prints_each_computed_trait_what_reads_it_and_what_sends_it(tmp_path):
    config, _ = _write(tmp_path)
    result = _run("pipelines.validate", "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["computed_traits"] == [
        {"name": "spend_3d", "computes": "sum of purchase.price in the last 3d",
         "read_by": ["big"], "sent_by": ["w-eh"]},
        {"name": "orders", "computes": "count of purchase (all time)", "read_by": [],
         "sent_by": ["w-eh"]},
        {"name": "avg_price", "computes": "avg of purchase.price (all time)", "read_by": [],
         "sent_by": []}]
    assert plan["audiences"][0]["computed"] == ["spend_3d"]
    text = _run("pipelines.validate", "--config", config)
    assert "computed traits:\n  spend_3d" in text.stdout
    assert "computed spend_3d" in text.stdout


def test_a_bad_computed_trait_is_one_line_naming_its_path(tmp_path):
    bad = dict(CONFIG, computed_traits={"spend_3d": {"op": "sum", "event": "purchase",
                                                     "property": "price", "whitin": "3d"}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = _run("pipelines.validate", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == ("error: computed_traits.spend_3d.whitin: unknown key (did you mean "
                             "'within'?)\n")


def test_explain_shows_the_computed_values_at_each_transition(tmp_path):
    config, events = _write(tmp_path)
    result = _run("pipelines.explain", "--config", config, "--input", events, "--user", "u1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    enter = lines.index("2026-11-02T10:00:00Z  ENTER big")
    assert lines[enter + 1:enter + 3] == [
        "      * true  computed spend_3d gte 100 (is 110.5)",
        "      computed: spend_3d=110.5, orders=2, avg_price=55.25"]
    # The exit comes with no event: when the 60 leaves the 3-day window.
    leave = lines.index("2026-11-04T10:00:00Z  EXIT  big")
    assert lines[leave + 1:leave + 3] == [
        "      * false computed spend_3d gte 100 (is 50.5)",
        "      computed: spend_3d=50.5, orders=2, avg_price=55.25"]


def test_the_report_lists_the_computed_traits():
    summary = {"command": "replay", "audiences": {"big": {"enters": 1, "exits": 1}},
               "computed_traits": [{"name": "spend_3d", "computes": "sum of purchase.price in "
                                    "the last 3d", "read_by": ["big"], "sent_by": ["w-eh"]}]}
    page = build_report(summary, [])
    assert ("<h2>Computed traits</h2>\n<table id=\"computed\"><thead><tr><th>computed trait</th>"
            "<th>computes</th><th>read by</th><th>sent by</th></tr></thead><tbody><tr>"
            "<td>spend_3d</td><td>sum of purchase.price in the last 3d</td><td>big</td>"
            "<td>w-eh</td></tr></tbody></table>") in page
    assert "Computed traits" not in build_report(dict(summary, computed_traits=[]), [])
