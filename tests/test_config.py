import json

import pytest

from cdp_activation.core.config import ConfigError, load_config, parse_config

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


# -- unknown keys (issue 18, point 1) ---------------------------------------------------------

BLOB = {"workflow": "azure_blob_event_export", "config": {"container": "exports"}}


def blob_with(**config):
    return dict(BLOB, config=dict(BLOB["config"], **config))


@pytest.mark.parametrize("raw,expected", [
    (dict(BASE, audience=[], works=[]), "audience: unknown key (did you mean 'audiences'?)"),
    (dict(BASE, workz=[]), "workz: unknown key (did you mean 'works'?)"),
    (dict(BASE, account={"name": "acme", "aid": 1, "region": "eu"}),
     "account.region: unknown key; known keys here: name, aid"),
    (dict(BASE, audiences=[{"slug": "b", "condition": {"event": "purchase", "min_cout": 3}}]),
     "audiences[0].condition.min_cout: unknown key (did you mean 'min_count'?)"),
    (dict(BASE, audiences=[{"slug": "b", "condition": {"event": "p", "whithin": "7d"}}]),
     "audiences[0].condition.whithin: unknown key (did you mean 'within'?)"),
    (dict(BASE, audiences=[{"slug": "b", "condition": {
        "event": "p", "where": {"property": "x", "op": "eq", "valeu": 1}}}]),
     "audiences[0].condition.where.valeu: unknown key (did you mean 'value'?)"),
    (dict(BASE, audiences=[{"slug": "b", "nmae": "B", "condition": {"event": "p"}}]),
     "audiences[0].nmae: unknown key (did you mean 'name'?)"),
    (config_with(dict(BLOB, pasued=True)), "works[0].pasued: unknown key (did you mean 'paused'?)"),
    (config_with(BLOB, BLOB, blob_with(period_hour=6)),
     "works[2].config.period_hour: unknown key (did you mean 'period_hours'?)"),
    (config_with(blob_with(fromat="parquet")),
     "works[0].config.fromat: unknown key (did you mean 'format'?)"),
    (config_with(blob_with(pasued=True)),
     "works[0].config.pasued: unknown key (did you mean 'paused'?)"),
    (config_with({"workflow": "eventhub_audience_export", "config": {"existing_user": True}}),
     "works[0].config.existing_user: unknown key (did you mean 'existing_users'?)"),
    (config_with({"workflow": "webhook_system_events", "config": {"webhook_ulr": "https://x.example/"}}),
     "works[0].config.webhook_ulr: unknown key (did you mean 'webhook_url'?)"),
    (config_with({"workflow": "email_system_events", "config": {"smtp_hots": "smtp.example.com"}}),
     "works[0].config.smtp_hots: unknown key (did you mean 'smtp_host'?)"),
    # A key of another workflow is unknown here.
    (config_with({"workflow": "eventhub_audience_export", "config": {"container": "x"}}),
     "works[0].config.container: unknown key; known keys here: connection_string, "
     "subscription_id, audiences, existing_users, start, user_fields, computed_fields, "
     "eventhub_name, paused"),
])
def test_unknown_keys_name_the_path_and_the_nearest_key(raw, expected):
    assert error_of(raw) == expected


def test_unknown_top_level_key_is_reported_before_what_it_causes():
    # Without `audiences` the work's audience reference would be unknown; the typo is the cause.
    raw = {"account": {"name": "acme"}, "audience": BASE["audiences"],
           "works": [{"workflow": "eventhub_audience_export", "config": {"audiences": ["buyers"]}}]}
    assert error_of(raw) == "audience: unknown key (did you mean 'audiences'?)"


def test_paused_is_taken_on_the_work_or_in_its_config():
    assert parse_config(config_with(blob_with(paused=True)), {}).works[0].paused is True
    assert parse_config(config_with(dict(blob_with(paused=True), paused=True)), {}).works[0].paused
    assert error_of(config_with(dict(blob_with(paused=False), paused=True))) == \
        "works[0].config.paused: differs from works[0].paused; set it in one place"
    assert error_of(config_with(blob_with(paused="yes"))) == \
        "works[0].config.paused: must be true or false"


# -- verbs and subject types (point 5) --------------------------------------------------------

def test_unknown_verb_and_subject_type_name_the_value_and_the_allowed_list():
    verbs = ("completed, created, deleted, failed, started, synccomplete, synced, syncing, "
             "updated")
    assert error_of(config_with({"workflow": "webhook_system_events",
                                 "config": {"system_event_type": "fialed"}})) == \
        "works[0].config.system_event_type: unknown verb 'fialed' (did you mean 'failed'?); " \
        "one of " + verbs
    assert error_of(config_with({"workflow": "email_system_events",
                                 "config": {"system_event_multiple_types": ["created", "exploded"]}})) == \
        "works[0].config.system_event_multiple_types[1]: unknown verb 'exploded'; one of " + verbs
    message = error_of(config_with({"workflow": "webhook_system_events",
                                    "config": {"system_event_sources": {"wrok": []}}}))
    assert message.startswith("works[0].config.system_event_sources.wrok: unknown subject type "
                              "'wrok' (did you mean 'work'?); one of account, auth, campaign,")
    assert message.endswith(", variation, work, workflow")


# -- destinations (point 4) -------------------------------------------------------------------

def hook(url, **config):
    return {"workflow": "webhook_system_events", "config": dict(webhook_url=url, **config)}


def mail(host, **config):
    return {"workflow": "email_system_events",
            "config": dict(smtp_host=host, to=["ops@example.com"], **{"from": "a@example.com"},
                           **config)}


FIX = "; write it as https://host[:port]/path"


@pytest.mark.parametrize("work,expected", [
    (hook("hooks.example.com/x"), "works[0].config.webhook_url: not a usable URL: it must start "
                                  "with https:// or http://" + FIX),
    (hook("https://"), "works[0].config.webhook_url: not a usable URL: it has no host" + FIX),
    (hook("https://hooks.example.com:99999/x"),
     "works[0].config.webhook_url: not a usable URL: the port is not a number from 1 to 65535" + FIX),
    (hook("https://hooks.example.com/a b"), "works[0].config.webhook_url: not a usable URL: it has "
                                           "a space or a control character (percent-encode it, "
                                           "e.g. %20)" + FIX),
    (hook("https://user:secret-pw@hooks.example.com/x"),
     "works[0].config.webhook_url: not a usable URL: it has user:password@ before the host, which "
     "is never sent; put credentials in headers (e.g. Authorization)" + FIX),
    (hook("https://-hooks.example.com/x"),
     "works[0].config.webhook_url: not a usable URL: its host '-hooks.example.com' is not a host "
     "name (each dot-separated part must be 1-63 letters, digits or hyphens)" + FIX),
    (mail("smtp.example.com:587"),
     "works[0].config.smtp_host: 'smtp.example.com:587' is not a host name (it has a port or is "
     "not an IP address); write the host alone, e.g. smtp.example.com, and the port in smtp_port"),
    (mail("smtp://smtp.example.com"),
     "works[0].config.smtp_host: 'smtp://smtp.example.com' is not a host name (it has a scheme); "
     "write the host alone, e.g. smtp.example.com, and the port in smtp_port"),
])
def test_malformed_destinations_fail_validation_with_the_fix(work, expected):
    message = error_of(config_with(work))
    assert message == expected
    assert "secret-pw" not in message


def test_good_destinations_pass():
    job = parse_config(config_with(hook("https://hooks.example.com:8443/services/T0/B0"),
                                   hook("http://[2001:db8::1]/x"), mail("smtp.example.com"),
                                   mail("192.0.2.25")), {})
    assert len(job.works) == 4


def fake_resolver(table):
    """``socket.getaddrinfo`` over a fixed table; a missing host does not resolve."""
    import socket

    def resolve(host, port, type=0):
        if host not in table:
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in table[host]]
    return resolve


def test_destinations_the_job_would_refuse_fail_before_any_data_moves():
    from cdp_activation.core.config import check_destinations
    resolve = fake_resolver({"hooks.example.com": ["93.184.216.34"],
                             "intranet.example.com": ["93.184.216.35", "10.1.2.3"],
                             "localhost": ["127.0.0.1"], "127.0.0.1": ["127.0.0.1"],
                             "smtp.example.com": ["169.254.169.254"]})
    ok = parse_config(config_with(hook("https://hooks.example.com/x"),
                                  hook("http://localhost:8080/x", allow_private_network=True)), {})
    assert check_destinations(ok, resolve) == []
    cases = [
        (hook("http://localhost:8080/x"), "works[0].config.webhook_url: the job refuses to connect "
         "to localhost (127.0.0.1), a loopback address; set allow_private_network: true in this "
         "work's config to allow it (local runs and tests only)"),
        (hook("http://127.0.0.1:9/x"), "works[0].config.webhook_url: the job refuses to connect "
         "to 127.0.0.1, a loopback address; set allow_private_network: true"),
        # One internal address among public ones refuses the host, as at connect time.
        (hook("https://intranet.example.com/x"), "works[0].config.webhook_url: the job refuses to "
         "connect to intranet.example.com (10.1.2.3), a private address; set allow_private_network"),
        (mail("smtp.example.com"), "works[0].config.smtp_host: the job refuses to connect to "
         "smtp.example.com (169.254.169.254), a link-local address (the cloud metadata range); "
         "set allow_private_network: true"),
    ]
    for work, expected in cases:
        job = parse_config(config_with(work), {})
        with pytest.raises(ConfigError) as info:
            check_destinations(job, resolve)
        assert str(info.value).startswith(expected)
    # A paused work is checked too: it sends once resumed.
    paused = parse_config(config_with(dict(hook("http://localhost/x"), paused=True)), {})
    with pytest.raises(ConfigError):
        check_destinations(paused, resolve)
    # A host that does not resolve here is a warning, not an error.
    unknown = parse_config(config_with(hook("https://hooks.nowhere.example/x")), {})
    assert check_destinations(unknown, resolve) == [
        "works[0].config.webhook_url: host hooks.nowhere.example does not resolve here (Name or "
        "service not known); the run will retry it and dead-letter what it cannot send"]


def test_syntax_errors_and_repeated_keys_name_line_and_column(tmp_path):
    cases = [
        ("c.yaml", "account: {name: acme}\nworks:\n  - workflow: eventhub_audience_export\n"
                   "   config: {}\n",
         "not valid YAML: line 4, column 4: expected <block end>, but found '<block mapping start>' "
         "(while parsing a block collection that starts at line 3, column 3)"),
        # YAML keeps the last of two equal keys: the first works list would be lost silently.
        ("d.yaml", "account: {name: acme}\nworks: []\naudiences: []\nworks:\n"
                   "  - {workflow: eventhub_audience_export}\n",
         "not valid YAML: line 4, column 1: duplicate key 'works' (the first one would be ignored)"),
        ("e.json", '{"account": {"name": "acme"},\n "works": [}',
         "not valid JSON: line 2, column 12: Expecting value"),
        ("f.json", '{"account": {"name": "acme", "name": "other"}}',
         "not valid JSON: duplicate key 'name' (the first one would be ignored)"),
    ]
    for name, text, expected in cases:
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(str(tmp_path / name))
        assert str(info.value) == "config %s: %s" % (tmp_path / name, expected)
    # A merge key is not a repeated key: the key after it overrides, as YAML says.
    (tmp_path / "g.yaml").write_text(
        "account: &acct {name: acme}\naudiences: []\nworks:\n  - workflow: eventhub_audience_export\n"
        "    config: &cfg {user_fields: [email]}\n  - workflow: eventhub_audience_export\n"
        "    config: {<<: *cfg, user_fields: [country]}\n")
    job = load_config(str(tmp_path / "g.yaml"))
    assert job.works[1].settings.user_fields == ["country"]


def test_input_max_ts_skew_and_the_blob_window_limit_are_config_keys():
    from cdp_activation.core.export import DEFAULT_MAX_WINDOWS
    blob = {"id": "w-blob", "workflow": "azure_blob_event_export", "config": {"container": "exports"}}
    job = parse_config(config_with(blob), {})
    assert job.max_ts_skew == 7 * 86400 * 10**6
    assert (job.works[0].settings.max_windows_per_run, job.works[0].settings.allow_more_windows) == (
        DEFAULT_MAX_WINDOWS, False) == (10000, False)
    job = parse_config(dict(config_with(dict(blob, config={
        "container": "exports", "max_windows_per_run": 50, "allow_more_windows": True})),
        input={"max_ts_skew": "36h"}), {})
    assert job.max_ts_skew == 36 * 3600 * 10**6
    assert (job.works[0].settings.max_windows_per_run, job.works[0].settings.allow_more_windows) == (
        50, True)
    assert error_of(dict(BASE, input={"max_ts_skew": "7 days"})).startswith("input.max_ts_skew: ")
    assert error_of(dict(BASE, input={"max_skew": "7d"})) == \
        "input.max_skew: unknown key (did you mean 'max_ts_skew'?)"
    assert error_of(dict(BASE, input="7d")).startswith("input: must be a mapping")
    assert error_of(config_with(dict(blob, config={"container": "exports", "max_windows_per_run": 0}))) \
        == "works[0].config.max_windows_per_run: must be an integer number >= 1"
    assert error_of(config_with(dict(blob, config={"container": "exports", "allow_more_windows": "yes"}))) \
        == "works[0].config.allow_more_windows: must be true or false"
