"""The job config (CONTRACT section 3): loading, ``${VAR}`` substitution and validation.

Validation happens before any data moves. Every error names the config path, for example
``works[3].config.period_hours: must be one of 1, 2, 4, 6, 12, 24`` or
``works[0].config.pasued: unknown key (did you mean 'paused'?)``: every mapping has a fixed set of
keys (below, and docs/CONFIG.md). :func:`parse_config` does no I/O; :func:`check_destinations`
resolves the alert works' hosts, which the commands call before a run or a plan.

The module is longer than 600 lines because it holds the whole schema: every workflow's keys,
defaults and checks, so that each key's rule is read next to the others'.
"""
import dataclasses
import ipaddress
import json
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from core.conditions import AudienceSet, ConditionError
from core.export import DEFAULT_MAX_WINDOWS
from core.keys import did_you_mean, unknown_key
from core.netguard import refusal_reason
from core.records import DEFAULT_MAX_TS_SKEW_US, SUBJECT_TYPES, VERBS
from core.timeutil import TimeFormatError, parse_duration, parse_time

WORKFLOWS = ("eventhub_audience_export", "webhook_system_events", "email_system_events",
             "azure_blob_event_export")
PERIOD_HOURS = (1, 2, 4, 6, 12, 24)
FORMATS = ("csv", "csv.gz", "parquet")
EXPORT_TYPES = ("events", "system_events")
#: Config keys whose values are secrets: never printed, logged or put in display data.
SECRET_KEYS = frozenset(("connection_string", "password", "signing_secret", "account_key",
                         "sas_token"))
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Every key of the config, per mapping (CONTRACT section 3; docs/CONFIG.md describes each). A key
# outside these is an error naming its path and the nearest known key.
TOP_LEVEL_KEYS = ("account", "audiences", "works", "input")
#: ``input``: how records are checked (``max_ts_skew``: how far ``ts`` may lie after received_at).
INPUT_KEYS = ("max_ts_skew",)
ACCOUNT_KEYS = ("name", "aid")
WORK_KEYS = ("id", "workflow", "config", "label", "description", "paused")
_ALERT_FILTER_KEYS = ("system_event_type", "system_event_multiple_types", "system_event_sources")
WORK_CONFIG_KEYS = {
    "eventhub_audience_export": (
        "connection_string", "subscription_id", "audiences", "existing_users", "start",
        "user_fields", "eventhub_name", "paused"),
    "webhook_system_events": _ALERT_FILTER_KEYS + (
        "webhook_url", "headers", "json_template", "allow_private_network", "signing_secret",
        "timeout_seconds", "max_attempts", "paused"),
    "email_system_events": _ALERT_FILTER_KEYS + (
        "smtp_host", "smtp_port", "from", "to", "username", "password", "allow_private_network",
        "timeout_seconds", "max_attempts", "paused"),
    "azure_blob_event_export": (
        "connection_string", "container", "prefix", "export_type", "period_hours", "events",
        "event_parameters", "attributes", "format", "anchor", "start", "max_windows_per_run",
        "allow_more_windows", "paused"),
}


class ConfigError(ValueError):
    """A config that cannot run; ``str()`` is the one line shown to the user."""


def check_keys(mapping, known, path):
    """Raises :class:`ConfigError` for the first key of ``mapping`` that is not in ``known``."""
    unknown = unknown_key(mapping, known, path)
    if unknown is not None:
        raise ConfigError("%s: %s" % unknown)


@dataclass
class Work:
    index: int
    id: str
    workflow: str
    config: dict
    label: Optional[str] = None
    description: Optional[str] = None
    paused: bool = False
    settings: object = None
    #: ``settings`` as the workers get them: a credential the config gives as a ``${VAR}``
    #: reference is an :class:`EnvRef` here, resolved on the worker (:func:`resolve_settings`).
    worker_settings: object = None

    @property
    def path(self):
        return "works[%d]" % self.index


@dataclass
class EventHubSettings:
    connection_string: Optional[str]
    subscription_id: str
    audiences: List[int]                 # audience indices exported by this work
    existing_users: bool
    start: Optional[int]                 # microseconds; None: no lower bound
    user_fields: Optional[List[str]]     # None: all traits
    eventhub_name: Optional[str] = None


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


@dataclass
class JobConfig:
    account_name: str
    aid: Optional[int]
    audiences: AudienceSet
    works: List[Work]
    source: str = ""
    raw: dict = field(default_factory=dict)   # after ${VAR} substitution: holds secrets
    #: microseconds a record's ts may lie after its received_at (``input.max_ts_skew``)
    max_ts_skew: int = DEFAULT_MAX_TS_SKEW_US

    def works_of(self, workflow, include_paused=True):
        return [w for w in self.works if w.workflow == workflow and (include_paused or not w.paused)]

    @property
    def export_attributes(self):
        """Trait names any events export needs as of each event (None when no events export)."""
        names, any_export = [], False
        for w in self.works_of("azure_blob_event_export"):
            if w.settings.export_type == "events":
                any_export = True
                names.extend(a for a in w.settings.attributes if a not in names)
        return names if any_export else None

    @property
    def backfill_starts(self):
        return sorted({w.settings.start for w in self.works_of("eventhub_audience_export")
                       if w.settings.existing_users and w.settings.start is not None})


class EnvRef:
    """A config string with ``${VAR}`` references, kept unresolved.

    Credentials travel to the workers in this form, inside the pickled DoFns and the pipeline's
    Runner API proto: only the variable names go, and :meth:`resolve` reads the values from the
    environment of the process that calls it (a worker, in its DoFn's ``setup()``). ``repr``
    shows the names, never a value.
    """

    __slots__ = ("template", "path")

    def __init__(self, template, path=""):
        if not isinstance(template, str) or not _VAR.search(template):
            raise ValueError("EnvRef needs a string with a ${VAR} reference")
        self.template = template
        self.path = path

    @property
    def names(self):
        """The environment variables this value is made of."""
        return tuple(_VAR.findall(self.template))

    def resolve(self, environ=None):
        """The value with every ``${VAR}`` replaced from ``environ`` (default ``os.environ``).

        Raises :class:`ConfigError` naming the config path and the variable when one is unset.
        """
        return substitute_env(self.template, self.path, environ)

    def __getstate__(self):
        return self.template, self.path

    def __setstate__(self, state):
        self.template, self.path = state

    def __eq__(self, other):
        return isinstance(other, EnvRef) and (self.template, self.path) == (other.template,
                                                                             other.path)

    def __hash__(self):
        return hash((self.template, self.path))

    def __repr__(self):
        return "EnvRef(%s)" % ", ".join("${%s}" % name for name in self.names)

    __str__ = __repr__


#: Settings fields that carry credentials (a Slack-style webhook URL is one too). Given as a
#: ``${VAR}`` reference they reach the workers as :class:`EnvRef` (see ``Work.worker_settings``).
DEFERRED_FIELDS = ("connection_string", "password", "signing_secret", "webhook_url", "headers")


def _deferred_settings(settings, unresolved, path):
    """``settings`` with each credential that ``unresolved`` (the work's config before
    substitution) gives as a ``${VAR}`` reference replaced by an :class:`EnvRef`."""
    if not isinstance(unresolved, dict):
        return settings
    changes = {}
    for name in DEFERRED_FIELDS:
        if not hasattr(settings, name) or getattr(settings, name) in (None, "", {}):
            continue
        template = unresolved.get(name)
        if name == "headers":
            if isinstance(template, dict):
                headers = dict(settings.headers)
                for key, value in template.items():
                    if key in headers and isinstance(value, str) and _VAR.search(value):
                        headers[key] = EnvRef(value, "%s.headers.%s" % (path, key))
                if headers != settings.headers:
                    changes[name] = headers
        elif isinstance(template, str) and _VAR.search(template):
            changes[name] = EnvRef(template, "%s.%s" % (path, name))
    return dataclasses.replace(settings, **changes) if changes else settings


def resolve_settings(settings, environ=None):
    """A copy of a work's settings with every :class:`EnvRef` resolved (``settings`` itself when
    it holds none). Raises :class:`ConfigError` naming the variable when one is unset."""
    if settings is None or not dataclasses.is_dataclass(settings):
        return settings
    changes = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, EnvRef):
            changes[item.name] = value.resolve(environ)
        elif isinstance(value, dict) and any(isinstance(v, EnvRef) for v in value.values()):
            changes[item.name] = {k: v.resolve(environ) if isinstance(v, EnvRef) else v
                                  for k, v in value.items()}
    return dataclasses.replace(settings, **changes) if changes else settings


def substitute_env(value, path, environ=None):
    """Replaces ``${VAR}`` in every string; an unset variable is an error naming it."""
    environ = os.environ if environ is None else environ
    if isinstance(value, str):
        def replace(match):
            name = match.group(1)
            if name not in environ:
                raise ConfigError("%s: environment variable %s is not set" % (path, name))
            return environ[name]
        return _VAR.sub(replace, value)
    if isinstance(value, list):
        return [substitute_env(v, "%s[%d]" % (path, i), environ) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: substitute_env(v, "%s.%s" % (path, k) if path else str(k), environ)
                for k, v in value.items()}
    return value


def load_config(path, environ=None):
    """Reads, substitutes and validates a YAML or JSON config file."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("config %s: cannot read: %s" % (path, exc.strerror or exc)) from None
    try:
        if path.endswith(".json"):
            raw = json.loads(text, object_pairs_hook=_json_object)
        else:
            raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    except _DuplicateJsonKey as exc:
        raise ConfigError("config %s: not valid JSON: %s" % (path, exc)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError("config %s: not valid JSON: line %d, column %d: %s"
                          % (path, exc.lineno, exc.colno, exc.msg)) from None
    except yaml.YAMLError as exc:
        raise ConfigError("config %s: not valid YAML: %s" % (path, _yaml_problem(exc))) from None
    job = parse_config(raw, environ)
    job.source = path
    return job


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: YAML would keep the
    last, and the first (a whole ``works:`` list, say) would be lost without a word."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges; a key after it overrides, as YAML says
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, "duplicate key %r (the first one would be ignored)" % (key,),
                        key_node.start_mark)
        return super().construct_mapping(node, deep)


class _DuplicateJsonKey(ValueError):
    pass


def _json_object(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateJsonKey("duplicate key %r (the first one would be ignored)" % key)
        result[key] = value
    return result


def _yaml_problem(exc):
    """One line from a YAML error: where (line and column from 1), what, and in what context."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = "line %d, column %d: " % (mark.line + 1, mark.column + 1) if mark is not None else ""
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem += " (%s that starts at line %d, column %d)" % (
            context, context_mark.line + 1, context_mark.column + 1)
    elif context:
        problem += " (%s)" % context
    if "'\\t'" in problem:
        problem += "; YAML indents with spaces, not tabs"
    return where + problem


def parse_config(raw, environ=None):
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a mapping with account, audiences and works")
    check_keys(raw, TOP_LEVEL_KEYS, "")
    unresolved = raw
    raw = substitute_env(raw, "", environ)
    account = raw.get("account") or {}
    if not isinstance(account, dict):
        raise ConfigError("account: must be a mapping with name and aid")
    check_keys(account, ACCOUNT_KEYS, "account")
    name = account.get("name", "account")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError("account.name: must be letters, digits, '.', '_' or '-'")
    aid = account.get("aid")
    if aid is not None and (not isinstance(aid, int) or isinstance(aid, bool)):
        raise ConfigError("account.aid: must be an integer")
    try:
        audiences = AudienceSet(raw.get("audiences") or [], "audiences")
    except ConditionError as exc:
        raise ConfigError(str(exc)) from None
    works_raw = raw.get("works") or []
    if not isinstance(works_raw, list):
        raise ConfigError("works: must be a list")
    works, seen_ids = [], set()
    unresolved_works = unresolved.get("works") if isinstance(unresolved.get("works"), list) \
        else []
    for i, item in enumerate(works_raw):
        work = _parse_work(i, item, audiences)
        unresolved_item = unresolved_works[i] if i < len(unresolved_works) else None
        work.worker_settings = _deferred_settings(
            work.settings, unresolved_item.get("config") if isinstance(unresolved_item, dict)
            else None, work.path + ".config")
        if work.id in seen_ids:
            raise ConfigError("works[%d].id: duplicate work id %r" % (i, work.id))
        seen_ids.add(work.id)
        works.append(work)
    max_ts_skew = _input_section(raw.get("input"))
    return JobConfig(name, aid, audiences, works, raw=raw, max_ts_skew=max_ts_skew)


def _input_section(section):
    """``input``: how records are checked. Its ``max_ts_skew`` (a duration, default ``7d``): how
    far a record's ``ts`` may lie after its ``received_at`` before it is dead-lettered."""
    if section is None:
        return DEFAULT_MAX_TS_SKEW_US
    if not isinstance(section, dict):
        raise ConfigError("input: must be a mapping, e.g. {max_ts_skew: 7d}")
    check_keys(section, INPUT_KEYS, "input")
    value = section.get("max_ts_skew")
    if value is None:
        return DEFAULT_MAX_TS_SKEW_US
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError("input.max_ts_skew: %s" % exc) from None


def _parse_work(i, item, audiences):
    path = "works[%d]" % i
    if not isinstance(item, dict):
        raise ConfigError(path + ": must be a mapping with workflow and config")
    check_keys(item, WORK_KEYS, path)
    workflow = item.get("workflow")
    if workflow not in WORKFLOWS:
        raise ConfigError("%s.workflow: unknown workflow %r%s; one of %s"
                          % (path, workflow, did_you_mean(workflow, WORKFLOWS), ", ".join(WORKFLOWS)))
    work_id = item.get("id") or "%s-%d" % (workflow, i + 1)
    if not isinstance(work_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", work_id):
        raise ConfigError(path + ".id: must be letters, digits, '.', '_' or '-'")
    config = item.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(path + ".config: must be a mapping")
    check_keys(config, WORK_CONFIG_KEYS[workflow], path + ".config")
    # ``paused`` belongs to the work; it is also taken inside ``config``, where it is easily put.
    paused = _bool(item, "paused", path)
    if "paused" in config:
        in_config = _bool(config, "paused", path + ".config")
        if "paused" in item and in_config != paused:
            raise ConfigError("%s.config.paused: differs from %s.paused; set it in one place"
                              % (path, path))
        paused = in_config
    work = Work(i, work_id, workflow, config, item.get("label"), item.get("description"), paused)
    parser = {"eventhub_audience_export": _eventhub, "webhook_system_events": _webhook,
              "email_system_events": _email, "azure_blob_event_export": _blob}[workflow]
    work.settings = parser(path + ".config", config, work, audiences)
    return work


def _string(cfg, key, path, required=False, default=None):
    value = cfg.get(key, default)
    if value is None or value == "":
        if required:
            raise ConfigError("%s.%s: required" % (path, key))
        return default if value is None else (value or default)
    if not isinstance(value, str):
        raise ConfigError("%s.%s: must be a string" % (path, key))
    return value


def _string_list(cfg, key, path):
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("%s.%s: must be a list of strings" % (path, key))
    return list(value)


def _bool(cfg, key, path, default=False):
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError("%s.%s: must be true or false" % (path, key))
    return value


def _number(cfg, key, path, default, minimum=0, integer=False):
    value = cfg.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value < minimum:
        raise ConfigError("%s.%s: must be a%s number >= %s"
                          % (path, key, "n integer" if integer else "", minimum))
    return value


def _time(cfg, key, path):
    value = cfg.get(key)
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except TimeFormatError as exc:
        raise ConfigError("%s.%s: %s" % (path, key, exc)) from None


def _eventhub(path, cfg, work, audiences):
    refs = _string_list(cfg, "audiences", path)
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
        connection_string=_string(cfg, "connection_string", path),
        subscription_id=str(subscription) or work.id,
        audiences=indices,
        existing_users=_bool(cfg, "existing_users", path),
        start=_time(cfg, "start", path),
        user_fields=_string_list(cfg, "user_fields", path),
        eventhub_name=_string(cfg, "eventhub_name", path))


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
    template = _string(cfg, "json_template", path)
    if template is not None:
        from core import templates
        try:
            templates.validate_template(template)
        except templates.TemplateError as exc:
            raise ConfigError("%s.json_template: %s" % (path, exc)) from None
    url = _string(cfg, "webhook_url", path)
    if url is not None:
        problem = _url_problem(url)
        if problem:
            # The URL itself is not shown: its path and query are often a credential (Slack).
            raise ConfigError("%s.webhook_url: not a usable URL: %s; write it as "
                              "https://host[:port]/path" % (path, problem))
    return AlertSettings(
        verbs, sources, webhook_url=url, headers={k: str(v) for k, v in headers.items()},
        json_template=template,
        allow_private_network=_bool(cfg, "allow_private_network", path),
        signing_secret=_string(cfg, "signing_secret", path),
        timeout_seconds=_number(cfg, "timeout_seconds", path, 10.0, minimum=0.1),
        max_attempts=_number(cfg, "max_attempts", path, 5, minimum=1, integer=True))


def _email(path, cfg, work, audiences):
    verbs, sources = _alert_filter(path, cfg)
    recipients = cfg.get("to") or []
    if isinstance(recipients, str):
        recipients = [recipients]
    if not isinstance(recipients, list) or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise ConfigError(path + ".to: must be a list of email addresses")
    host = _string(cfg, "smtp_host", path)
    problem = _host_problem(host) if host is not None else None
    if problem:
        raise ConfigError("%s.smtp_host: %r is not a host name (%s); write the host alone, e.g. "
                          "smtp.example.com, and the port in smtp_port" % (path, host, problem))
    if host and not recipients:
        raise ConfigError(path + ".to: at least one recipient is required with smtp_host")
    sender = _string(cfg, "from", path)
    if host and not sender:
        raise ConfigError(path + ".from: required with smtp_host")
    return AlertSettings(
        verbs, sources, smtp_host=host,
        smtp_port=_number(cfg, "smtp_port", path, 587, minimum=1, integer=True),
        sender=sender, recipients=recipients, username=_string(cfg, "username", path),
        password=_string(cfg, "password", path),
        timeout_seconds=_number(cfg, "timeout_seconds", path, 10.0, minimum=0.1),
        max_attempts=_number(cfg, "max_attempts", path, 3, minimum=1, integer=True),
        allow_private_network=_bool(cfg, "allow_private_network", path))


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _host_problem(host):
    """Why ``host`` is neither a host name nor an IP address, or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if "://" in host:
        return "it has a scheme"
    if ":" in host:
        return "it has a port or is not an IP address"
    if "/" in host or "@" in host or any(c.isspace() for c in host):
        return "it has '/', '@' or a space"
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        return "it is not a valid international domain name"
    labels = ascii_host[:-1].split(".") if ascii_host.endswith(".") else ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "each dot-separated part must be 1-63 letters, digits or hyphens"
    return None


def _url_problem(url):
    """Why the job could not send to ``url``, or None."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "it has a space or a control character (percent-encode it, e.g. %20)"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        if "Port" in str(exc) or "port" in str(exc):
            return "the port is not a number from 1 to 65535"
        return "it cannot be parsed (%s)" % exc
    if parts.scheme not in ("http", "https"):
        return "it must start with https:// or http://"
    if not parts.hostname:
        return "it has no host"
    if "@" in parts.netloc:
        return ("it has user:password@ before the host, which is never sent; put credentials "
                "in headers (e.g. Authorization)")
    if port == 0:
        return "the port is not a number from 1 to 65535"
    problem = _host_problem(parts.hostname)
    if problem:
        return "its host %r is not a host name (%s)" % (parts.hostname, problem)
    return None


def destinations(job):
    """(config path, host, port, allow_private_network) of every network destination of the job's
    alert works (paused ones too: they send once resumed)."""
    out = []
    for work in job.works:
        s = work.settings
        if work.workflow == "webhook_system_events" and s.webhook_url:
            parts = urllib.parse.urlsplit(s.webhook_url)
            out.append((work.path + ".config.webhook_url", parts.hostname,
                        parts.port or (443 if parts.scheme == "https" else 80),
                        s.allow_private_network))
        elif work.workflow == "email_system_events" and s.smtp_host:
            out.append((work.path + ".config.smtp_host", s.smtp_host, s.smtp_port,
                        s.allow_private_network))
    return out


def check_destinations(job, resolve=socket.getaddrinfo):
    """Refuses, before any data moves, a destination the alert works would refuse at connect time
    (core.netguard): a host that resolves to a loopback, private, link-local or other non-public
    address, unless the work sets ``allow_private_network: true``.

    ``resolve`` is ``socket.getaddrinfo``'s signature. A host that does not resolve here is not an
    error (the machine that validates may not see the network that runs the job); it is returned
    as a warning line, and at run time it is retried and dead-lettered like any connection error.
    """
    warnings = []
    for path, host, port, allow_private in destinations(job):
        if allow_private:
            continue
        try:
            infos = resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            warnings.append("%s: host %s does not resolve here (%s); the run will retry it and "
                            "dead-letter what it cannot send"
                            % (path, host, getattr(exc, "strerror", None) or exc))
            continue
        for info in infos:
            address = info[4][0]
            reason = refusal_reason(address)
            if reason is not None:
                shown = host if host == address.split("%", 1)[0] else "%s (%s)" % (host, address)
                raise ConfigError(
                    "%s: the job refuses to connect to %s, a %s; set allow_private_network: true "
                    "in this work's config to allow it (local runs and tests only)"
                    % (path, shown, reason))
    return warnings


def _blob(path, cfg, work, audiences):
    period = cfg.get("period_hours", 1)
    if period not in PERIOD_HOURS or isinstance(period, bool):
        raise ConfigError(path + ".period_hours: must be one of 1, 2, 4, 6, 12, 24")
    fmt = cfg.get("format", "csv")
    if fmt not in FORMATS:
        raise ConfigError(path + ".format: must be one of csv, csv.gz, parquet")
    export_type = cfg.get("export_type", "events")
    if export_type not in EXPORT_TYPES:
        raise ConfigError(path + ".export_type: must be one of events, system_events")
    container = _string(cfg, "container", path, required=True)
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])?", container) or "--" in container:
        raise ConfigError(path + ".container: must be 3-63 lower-case letters, digits and single "
                                 "hyphens (an Azure container name)")
    prefix = _string(cfg, "prefix", path, default="") or ""
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(path + ".prefix: must be a relative blob path")
    events = _string_list(cfg, "events", path)
    return BlobSettings(
        connection_string=_string(cfg, "connection_string", path),
        container=container, prefix=prefix, export_type=export_type, period_hours=period,
        events=frozenset(events) if events else None,
        event_parameters=_string_list(cfg, "event_parameters", path) or [],
        attributes=_string_list(cfg, "attributes", path) or [],
        format=fmt, anchor=_time(cfg, "anchor", path), start=_time(cfg, "start", path),
        max_windows_per_run=_number(cfg, "max_windows_per_run", path, DEFAULT_MAX_WINDOWS,
                                    minimum=1, integer=True),
        allow_more_windows=_bool(cfg, "allow_more_windows", path))
