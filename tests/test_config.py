import json

import pytest

from core.config import ConfigError, load_config, parse_config

BASE = {"account": {"name": "acme", "aid": 1234},
        "audiences": [{"id": "abc", "slug": "buyers", "condition": {"event": "purchase"}}]}


def config_with(*works):
    return dict(BASE, works=list(works))


def error_of(raw, environ=None):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ or {})
    return str(info.value)


def test_lytics_examples_paste_as_they_are():
    job = parse_config(config_with(
        {"workflow": "webhook_system_events",
         "config": {"system_event_multiple_types": ["updated", "created", "failed"],
                    "system_event_sources": {"work": []}, "webhook_url": "https://hooks.example.com/x",
                    "headers": {"custom-header": "header-value"}}},
        {"workflow": "eventhub_audience_export", "config": {"audiences": ["buyers"]}}), {})
    assert [w.id for w in job.works] == ["webhook_system_events-1", "eventhub_audience_export-2"]
    assert job.works[1].settings.subscription_id == "eventhub_audience_export-2"
    assert job.works[0].settings.sources == {"work": frozenset()}


def test_env_substitution_and_unset_variable():
    work = {"id": "w", "workflow": "eventhub_audience_export",
            "config": {"connection_string": "${EH_CS}"}}
    job = parse_config(config_with(work), {"EH_CS": "Endpoint=sb://x/;SharedAccessKey=k"})
    assert job.works[0].settings.connection_string.startswith("Endpoint=")
    assert error_of(config_with(work)) == "works[0].config.connection_string: environment variable EH_CS is not set"


@pytest.mark.parametrize("work,expected", [
    ({"workflow": "ftp_export"}, "works[0].workflow: unknown workflow 'ftp_export'"),
    ({"workflow": "azure_blob_event_export", "config": {"container": "exports", "period_hours": 3}},
     "works[0].config.period_hours: must be one of 1, 2, 4, 6, 12, 24"),
    ({"workflow": "azure_blob_event_export", "config": {"container": "exports", "format": "xlsx"}},
     "works[0].config.format: must be one of csv, csv.gz, parquet"),
    ({"workflow": "azure_blob_event_export", "config": {}}, "works[0].config.container: required"),
    ({"workflow": "eventhub_audience_export", "config": {"audiences": ["nobody"]}},
     "works[0].config.audiences[0]: unknown audience 'nobody'"),
    ({"workflow": "webhook_system_events", "config": {"system_event_type": "exploded"}},
     "works[0].config.system_event_type: unknown verb 'exploded'"),
    ({"workflow": "eventhub_audience_export", "config": {"start": "soon"}}, "works[0].config.start:"),
])
def test_validation_errors_name_the_path(work, expected):
    assert error_of(config_with(work)).startswith(expected)


def test_template_that_does_not_compile_fails_validation():
    message = error_of(config_with({"workflow": "webhook_system_events",
                                    "config": {"json_template": "{ text: "}}))
    assert message.startswith("works[0].config.json_template:")


def test_bad_condition_and_cycle_fail_validation():
    raw = dict(BASE, audiences=[{"slug": "a", "condition": {"audience": "b"}},
                                {"slug": "b", "condition": {"audience": "a"}}])
    assert "cycle between audiences" in error_of(raw)


def test_yaml_and_json_files(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(config_with()))
    (tmp_path / "c.yaml").write_text("account: {name: acme}\naudiences: []\nworks: []\n")
    assert load_config(str(tmp_path / "c.json")).account_name == "acme"
    assert load_config(str(tmp_path / "c.yaml")).works == []
    (tmp_path / "bad.yaml").write_text("account: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: line 2, column 1: "):
        load_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))


def test_paused_label_description():
    job = parse_config(config_with({"workflow": "eventhub_audience_export", "paused": True,
                                    "label": "EH", "description": "to the hub"}), {})
    assert (job.works[0].paused, job.works[0].label) == (True, "EH")
