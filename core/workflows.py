"""The workflows a work can run (CONTRACT section 3, docs/CONFIG.md): the one place that knows each.

:data:`WORKFLOWS` holds, per workflow name, a :class:`Workflow`: its settings type, its config keys
and their defaults, the parser that validates a work's ``config`` into settings, the counters the
run summary shows for it, its entry in ``pipelines.validate``'s plan, and the network destination
checked before a run. Config parsing (``core.config``), the plan, the summary and the docs check
(tests/test_workflows.py) ask it; the Beam side of each workflow (its preflight and the transform
that runs it) is registered under the same names in ``pipelines/workflows.py``.
"""
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from cdp_activation.core.export import DEFAULT_MAX_WINDOWS
from cdp_activation.core.keys import did_you_mean
from cdp_activation.core.records import SUBJECT_TYPES, VERBS
from cdp_activation.core.timeutil import format_time
from cdp_activation.core.values import (ConfigError, host_problem, read_bool, read_number, read_string,
                         read_string_list, read_time, url_problem)

EVENTHUB_AUDIENCE_EXPORT = "eventhub_audience_export"
WEBHOOK_SYSTEM_EVENTS = "webhook_system_events"
EMAIL_SYSTEM_EVENTS = "email_system_events"
AZURE_BLOB_EVENT_EXPORT = "azure_blob_event_export"

PERIOD_HOURS = (1, 2, 4, 6, 12, 24)
FORMATS = ("csv", "csv.gz", "parquet")
EXPORT_TYPES = ("events", "system_events")
_ALERT_FILTER_KEYS = ("system_event_type", "system_event_multiple_types", "system_event_sources")

# The defaults of each workflow's keys that have a plain value (docs/CONFIG.md shows each).
EVENTHUB_DEFAULTS = {"existing_users": False}
WEBHOOK_DEFAULTS = {"allow_private_network": False, "timeout_seconds": 10.0, "max_attempts": 5}
EMAIL_DEFAULTS = {"smtp_port": 587, "allow_private_network": False, "timeout_seconds": 10.0,
                  "max_attempts": 3}
BLOB_DEFAULTS = {"prefix": "", "export_type": "events", "period_hours": 1, "format": "csv",
                 "max_windows_per_run": DEFAULT_MAX_WINDOWS, "allow_more_windows": False}


# -- settings: what a work's config validates into ---------------------------------------------

@dataclass
class EventHubSettings:
    connection_string: Optional[str]
    subscription_id: str
    audiences: List[int]                 # audience indices exported by this work
    existing_users: bool
    start: Optional[int]                 # microseconds; None: no lower bound
    user_fields: Optional[List[str]]     # None: all traits
    eventhub_name: Optional[str] = None
    computed_fields: List[str] = field(default_factory=list)  # computed traits copied into data


@dataclass
class AlertSettings:
    verbs: Optional[frozenset]           # None: every verb
    sources: Optional[Dict[str, frozenset]]  # None: every subject; {} for a type = every id
    webhook_url: Optional[str] = None
    headers: Dict[str, str] = field(default_factory=dict)
    json_template: Optional[str] = None
    allow_private_network: bool = False
    signing_secret: Optional[str] = None
    timeout_seconds: float = 10.0
    max_attempts: int = 5
    smtp_host: Optional[str] = None
    smtp_port: int = 587
    sender: Optional[str] = None
    recipients: List[str] = field(default_factory=list)
    username: Optional[str] = None
    password: Optional[str] = None


@dataclass
class BlobSettings:
    connection_string: Optional[str]
    container: str
    prefix: str
    export_type: str
    period_hours: int
    events: Optional[frozenset]          # None: all events
    event_parameters: List[str]
    attributes: List[str]
    format: str
    anchor: Optional[int]
    start: Optional[int]
    max_windows_per_run: int = DEFAULT_MAX_WINDOWS
    allow_more_windows: bool = False
    computed: List[str] = field(default_factory=list)  # computed.<name> columns


# -- parsing: a work's config into its settings -------------------------------------------------

def _eventhub(path, cfg, work, audiences):
    refs = read_string_list(cfg, "audiences", path)
    if refs is None:
        indices = [a.index for a in audiences.audiences]
    else:
        indices = []
        for j, ref in enumerate(refs):
            audience = audiences.by_ref(ref)
            if audience is None:
                raise ConfigError("%s.audiences[%d]: unknown audience %r" % (path, j, ref))
            if audience.index not in indices:
                indices.append(audience.index)
    subscription = cfg.get("subscription_id", work.id)
    if not isinstance(subscription, (str, int)) or isinstance(subscription, bool):
        raise ConfigError(path + ".subscription_id: must be a string")
    return EventHubSettings(
        connection_string=read_string(cfg, "connection_string", path),
        subscription_id=str(subscription) or work.id,
        audiences=indices,
        existing_users=read_bool(cfg, "existing_users", path, EVENTHUB_DEFAULTS["existing_users"]),
        start=read_time(cfg, "start", path),
        user_fields=read_string_list(cfg, "user_fields", path),
        eventhub_name=read_string(cfg, "eventhub_name", path),
        computed_fields=_computed_names(cfg, "computed_fields", path, audiences))


def _alert_filter(path, cfg):
    single = cfg.get("system_event_type")
    multiple = cfg.get("system_event_multiple_types")
    verbs = None
    if single not in (None, ""):
        _check_member(single, VERBS, "verb", path + ".system_event_type")
        verbs = {single}
    if multiple is not None:
        if not isinstance(multiple, list):
            raise ConfigError("%s.system_event_multiple_types: must be a list of verbs (%s)"
                              % (path, ", ".join(sorted(VERBS))))
        for j, verb in enumerate(multiple):
            _check_member(verb, VERBS, "verb", "%s.system_event_multiple_types[%d]" % (path, j))
        verbs = (verbs or set()) | set(multiple)
    sources_raw = cfg.get("system_event_sources")
    sources = None
    if sources_raw is not None:
        if not isinstance(sources_raw, dict):
            raise ConfigError(path + ".system_event_sources: must map subject types to id lists")
        sources = {}
        for subject_type, ids in sources_raw.items():
            _check_member(subject_type, SUBJECT_TYPES, "subject type",
                          "%s.system_event_sources.%s" % (path, subject_type))
            if ids is None:
                ids = []
            if not isinstance(ids, list):
                raise ConfigError("%s.system_event_sources.%s: must be a list of ids"
                                  % (path, subject_type))
            sources[subject_type] = frozenset(str(x) for x in ids)
    return (frozenset(verbs) if verbs is not None else None), sources


def _check_member(value, allowed, what, path):
    """An unknown verb or subject type names the value, the nearest one and every allowed one."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError("%s: unknown %s %r%s; one of %s" % (
            path, what, value, did_you_mean(value, sorted(allowed)), ", ".join(sorted(allowed))))


def _webhook(path, cfg, work, audiences):
    verbs, sources = _alert_filter(path, cfg)
    headers = cfg.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                                and not isinstance(v, bool)
                                                for k, v in headers.items()):
        raise ConfigError(path + ".headers: must map header names to string values")
    template = read_string(cfg, "json_template", path)
    if template is not None:
        from cdp_activation.core import templates
        try:
            templates.validate_template(template)
        except templates.TemplateError as exc:
            raise ConfigError("%s.json_template: %s" % (path, exc)) from None
    url = read_string(cfg, "webhook_url", path)
    if url is not None:
        problem = url_problem(url)
        if problem:
            # The URL itself is not shown: its path and query are often a credential (Slack).
            raise ConfigError("%s.webhook_url: not a usable URL: %s; write it as "
                              "https://host[:port]/path" % (path, problem))
    return AlertSettings(
        verbs, sources, webhook_url=url, headers={k: str(v) for k, v in headers.items()},
        json_template=template,
        allow_private_network=read_bool(cfg, "allow_private_network", path,
                                        WEBHOOK_DEFAULTS["allow_private_network"]),
        signing_secret=read_string(cfg, "signing_secret", path),
        timeout_seconds=read_number(cfg, "timeout_seconds", path,
                                    WEBHOOK_DEFAULTS["timeout_seconds"], minimum=0.1),
        max_attempts=read_number(cfg, "max_attempts", path, WEBHOOK_DEFAULTS["max_attempts"],
                                 minimum=1, integer=True))


def _email(path, cfg, work, audiences):
    verbs, sources = _alert_filter(path, cfg)
    recipients = cfg.get("to") or []
    if isinstance(recipients, str):
        recipients = [recipients]
    if not isinstance(recipients, list) or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise ConfigError(path + ".to: must be a list of email addresses")
    host = read_string(cfg, "smtp_host", path)
    problem = host_problem(host) if host is not None else None
    if problem:
        raise ConfigError("%s.smtp_host: %r is not a host name (%s); write the host alone, e.g. "
                          "smtp.example.com, and the port in smtp_port" % (path, host, problem))
    if host and not recipients:
        raise ConfigError(path + ".to: at least one recipient is required with smtp_host")
    sender = read_string(cfg, "from", path)
    if host and not sender:
        raise ConfigError(path + ".from: required with smtp_host")
    return AlertSettings(
        verbs, sources, smtp_host=host,
        smtp_port=read_number(cfg, "smtp_port", path, EMAIL_DEFAULTS["smtp_port"], minimum=1,
                              integer=True),
        sender=sender, recipients=recipients, username=read_string(cfg, "username", path),
        password=read_string(cfg, "password", path),
        timeout_seconds=read_number(cfg, "timeout_seconds", path,
                                    EMAIL_DEFAULTS["timeout_seconds"], minimum=0.1),
        max_attempts=read_number(cfg, "max_attempts", path, EMAIL_DEFAULTS["max_attempts"],
                                 minimum=1, integer=True),
        allow_private_network=read_bool(cfg, "allow_private_network", path,
                                        EMAIL_DEFAULTS["allow_private_network"]))


def _blob(path, cfg, work, audiences):
    period = cfg.get("period_hours", BLOB_DEFAULTS["period_hours"])
    if period not in PERIOD_HOURS or isinstance(period, bool):
        raise ConfigError(path + ".period_hours: must be one of 1, 2, 4, 6, 12, 24")
    fmt = cfg.get("format", BLOB_DEFAULTS["format"])
    if fmt not in FORMATS:
        raise ConfigError(path + ".format: must be one of csv, csv.gz, parquet")
    export_type = cfg.get("export_type", BLOB_DEFAULTS["export_type"])
    if export_type not in EXPORT_TYPES:
        raise ConfigError(path + ".export_type: must be one of events, system_events")
    container = read_string(cfg, "container", path, required=True)
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])?", container) or "--" in container:
        raise ConfigError(path + ".container: must be 3-63 lower-case letters, digits and single "
                                 "hyphens (an Azure container name)")
    prefix = read_string(cfg, "prefix", path, default=BLOB_DEFAULTS["prefix"]) or ""
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(path + ".prefix: must be a relative blob path")
    events = read_string_list(cfg, "events", path)
    return BlobSettings(
        connection_string=read_string(cfg, "connection_string", path),
        container=container, prefix=prefix, export_type=export_type, period_hours=period,
        events=frozenset(events) if events else None,
        event_parameters=read_string_list(cfg, "event_parameters", path) or [],
        attributes=read_string_list(cfg, "attributes", path) or [],
        format=fmt, anchor=read_time(cfg, "anchor", path), start=read_time(cfg, "start", path),
        max_windows_per_run=read_number(cfg, "max_windows_per_run", path,
                                        BLOB_DEFAULTS["max_windows_per_run"], minimum=1,
                                        integer=True),
        allow_more_windows=read_bool(cfg, "allow_more_windows", path,
                                     BLOB_DEFAULTS["allow_more_windows"]),
        computed=_computed_names(cfg, "computed", path, audiences))


def _computed_names(cfg, key, path, audiences):
    """``cfg[key]``: names of computed traits (``computed_traits``), each one defined."""
    names = read_string_list(cfg, key, path) or []
    if names:
        computed = getattr(audiences, "computed", None)
        for j, name in enumerate(names):
            if computed is None or name not in computed.by_name:
                known = ", ".join(computed.names) if computed is not None and len(computed) \
                    else "none is defined (computed_traits)"
                raise ConfigError("%s.%s[%d]: unknown computed trait %r%s; known: %s" % (
                    path, key, j, name, did_you_mean(name, computed.names if computed else ()),
                    known))
    return names


# -- the plan (pipelines.validate) and the destinations checked before a run ---------------------

def _eventhub_plan(job, work):
    s = work.settings
    return {"destination": ("Event Hubs" if s.connection_string
                            else "local file eventhub/%s.jsonl" % work.id),
            "audiences": [job.audiences.audiences[i].slug for i in s.audiences],
            "start": format_time(s.start) if s.start is not None else None,
            "backfill": s.existing_users}


def _blob_plan(job, work):
    s = work.settings
    return {"destination": ("Azure Blob container %s" % s.container if s.connection_string
                            else "local dir blob/%s/" % s.container),
            "files": "%s%s_%s_%s_<start>_<end>.%s" % (s.prefix, job.account_name, s.export_type,
                                                     work.id, s.format),
            "period_hours": s.period_hours,
            "max_windows_per_run": None if s.allow_more_windows else s.max_windows_per_run}


def _webhook_plan(job, work):
    s = work.settings
    return {"destination": s.webhook_url or "local file alerts/%s.jsonl" % work.id,
            "verbs": sorted(s.verbs) if s.verbs else "all",
            "sources": ({k: sorted(v) or "all" for k, v in s.sources.items()} if s.sources
                        else "all")}


def _email_plan(job, work):
    s = work.settings
    return {"destination": ("SMTP %s:%d to %s" % (s.smtp_host, s.smtp_port, ", ".join(s.recipients))
                            if s.smtp_host else "local file alerts/%s.jsonl" % work.id),
            "verbs": sorted(s.verbs) if s.verbs else "all"}


def _no_destination(work):
    return None


def _webhook_destination(work):
    s = work.settings
    if not s.webhook_url:
        return None
    parts = urllib.parse.urlsplit(s.webhook_url)
    return (work.path + ".config.webhook_url", parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80), s.allow_private_network)


def _email_destination(work):
    s = work.settings
    if not s.smtp_host:
        return None
    return work.path + ".config.smtp_host", s.smtp_host, s.smtp_port, s.allow_private_network


# -- the registry --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workflow:
    """Everything the pure core knows of one workflow.

    ``parse(path, config, work, audiences)`` validates a work's ``config`` (at config path
    ``path``) into ``settings_type``, or raises :class:`ConfigError`. ``summary_counters``: the
    work's delivery counters in the run summary (``deadlettered`` and ``failures`` come with every
    work). ``plan(job, work)``: the work's fields in ``pipelines.validate``'s plan.
    ``destination(work)``: ``(config path, host, port, allow_private_network)`` of the network
    destination checked before a run (``core.config.check_destinations``), or None.
    """
    name: str
    settings_type: type
    config_keys: Tuple[str, ...]
    defaults: Mapping[str, Any]
    parse: Callable[[str, dict, Any, Any], Any]
    summary_counters: Tuple[str, ...]
    plan: Callable[[Any, Any], dict]
    destination: Callable[[Any], Optional[Tuple[str, str, int, bool]]] = _no_destination


#: Every workflow, by name, in the order the docs and error messages list them.
WORKFLOWS: Dict[str, Workflow] = {w.name: w for w in (
    Workflow(EVENTHUB_AUDIENCE_EXPORT, EventHubSettings,
             ("connection_string", "subscription_id", "audiences", "existing_users", "start",
              "user_fields", "computed_fields", "eventhub_name", "paused"),
             EVENTHUB_DEFAULTS, _eventhub, ("messages_delivered", "batches_delivered"),
             _eventhub_plan),
    Workflow(WEBHOOK_SYSTEM_EVENTS, AlertSettings,
             _ALERT_FILTER_KEYS + ("webhook_url", "headers", "json_template",
                                   "allow_private_network", "signing_secret", "timeout_seconds",
                                   "max_attempts", "paused"),
             WEBHOOK_DEFAULTS, _webhook, ("alerts_delivered",), _webhook_plan,
             _webhook_destination),
    Workflow(EMAIL_SYSTEM_EVENTS, AlertSettings,
             _ALERT_FILTER_KEYS + ("smtp_host", "smtp_port", "from", "to", "username", "password",
                                   "allow_private_network", "timeout_seconds", "max_attempts",
                                   "paused"),
             EMAIL_DEFAULTS, _email, ("alerts_delivered",), _email_plan, _email_destination),
    Workflow(AZURE_BLOB_EVENT_EXPORT, BlobSettings,
             ("connection_string", "container", "prefix", "export_type", "period_hours", "events",
              "event_parameters", "attributes", "computed", "format", "anchor", "start",
              "max_windows_per_run", "allow_more_windows", "paused"),
             BLOB_DEFAULTS, _blob, ("files_delivered", "rows_delivered", "skipped_before_marker"),
             _blob_plan),
)}


def backfill_starts(works: List[Any]) -> List[int]:
    """The distinct ``start`` times at which an Event Hub export backfills its existing members."""
    return sorted({w.settings.start for w in works if w.workflow == EVENTHUB_AUDIENCE_EXPORT
                   and w.settings.existing_users and w.settings.start is not None})


def export_computed(works: List[Any]) -> Optional[List[str]]:
    """Computed trait names any events export needs as of each event (None when none does)."""
    names = []
    for w in works:
        if w.workflow == AZURE_BLOB_EVENT_EXPORT and w.settings.export_type == "events":
            names.extend(c for c in w.settings.computed if c not in names)
    return names or None


def change_computed(works: List[Any]) -> bool:
    """Whether any Event Hub export copies computed traits into its messages' ``data``."""
    return any(w.workflow == EVENTHUB_AUDIENCE_EXPORT and w.settings.computed_fields
               for w in works)


def export_attributes(works: List[Any]) -> Optional[List[str]]:
    """Trait names any events export needs as of each event (None when no events export)."""
    names, any_export = [], False
    for w in works:
        if w.workflow == AZURE_BLOB_EVENT_EXPORT and w.settings.export_type == "events":
            any_export = True
            names.extend(a for a in w.settings.attributes if a not in names)
    return names if any_export else None
