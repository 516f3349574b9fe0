"""The job config (CONTRACT section 3): loading, ``${VAR}`` substitution and validation.

Validation happens before any data moves. Every error names the config path, for example
``works[3].config.period_hours: must be one of 1, 2, 4, 6, 12, 24`` or
``works[0].config.pasued: unknown key (did you mean 'paused'?)``: every mapping has a fixed set of
keys (below; a work's ``config``, per workflow, in ``core.workflows``; docs/CONFIG.md describes
each). :func:`parse_config` does no I/O; :func:`check_destinations` resolves the alert works' hosts,
which the commands call before a run or a plan.
"""
import dataclasses
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Tuple

import yaml

from cdp_activation.core import workflows
from cdp_activation.core.computed import ComputedSet
from cdp_activation.core.conditions import AudienceSet, ConditionError
from cdp_activation.core.identity import IdentitySettings, parse_identity
from cdp_activation.core.keys import did_you_mean
from cdp_activation.core.netguard import refusal_reason
from cdp_activation.core.records import DEFAULT_MAX_TS_SKEW_US
from cdp_activation.core.timeutil import parse_duration
from cdp_activation.core.values import ConfigError, check_keys, read_bool
from cdp_activation.core.workflows import WORKFLOWS

#: Config keys whose values are secrets: never printed, logged or put in display data.
SECRET_KEYS = frozenset(("connection_string", "password", "signing_secret", "account_key",
                         "sas_token"))
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Every key of the config, per mapping (CONTRACT section 3; docs/CONFIG.md describes each). A key
# outside these is an error naming its path and the nearest known key.
TOP_LEVEL_KEYS = ("account", "computed_traits", "audiences", "works", "input", "identity")
#: ``input``: how records are checked (``max_ts_skew``: how far ``ts`` may lie after received_at).
INPUT_KEYS = ("max_ts_skew",)
ACCOUNT_KEYS = ("name", "aid")
WORK_KEYS = ("id", "workflow", "config", "label", "description", "paused")


@dataclass
class Work:
    index: int
    id: str
    workflow: str
    config: dict
    label: Optional[str] = None
    description: Optional[str] = None
    paused: bool = False
    settings: Any = None
    #: ``settings`` as the workers get them: a credential the config gives as a ``${VAR}``
    #: reference is an :class:`EnvRef` here, resolved on the worker (:func:`resolve_settings`).
    worker_settings: Any = None

    @property
    def path(self) -> str:
        return "works[%d]" % self.index


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
    #: ``identity``: identity stitching (``core.identity``), off unless ``stitch: true``
    identity: IdentitySettings = IdentitySettings()

    def works_of(self, workflow: str, include_paused: bool = True) -> List[Work]:
        return [w for w in self.works if w.workflow == workflow and (include_paused or not w.paused)]

    @property
    def export_attributes(self) -> Optional[List[str]]:
        """Trait names any events export needs as of each event (None when no events export)."""
        return workflows.export_attributes(self.works)

    @property
    def export_computed(self) -> Optional[List[str]]:
        """Computed trait names any events export needs as of each event (None: none)."""
        return workflows.export_computed(self.works)

    @property
    def change_computed(self) -> bool:
        """Whether any Event Hub export copies computed traits into its messages."""
        return workflows.change_computed(self.works)

    @property
    def backfill_starts(self) -> List[int]:
        return workflows.backfill_starts(self.works)


class EnvRef:
    """A config string with ``${VAR}`` references, kept unresolved.

    Credentials travel to the workers in this form, inside the pickled DoFns and the pipeline's
    Runner API proto: only the variable names go, and :meth:`resolve` reads the values from the
    environment of the process that calls it (a worker, in its DoFn's ``setup()``). ``repr``
    shows the names, never a value.
    """

    __slots__ = ("template", "path")

    def __init__(self, template: str, path: str = "") -> None:
        if not isinstance(template, str) or not _VAR.search(template):
            raise ValueError("EnvRef needs a string with a ${VAR} reference")
        self.template = template
        self.path = path

    @property
    def names(self) -> Tuple[str, ...]:
        """The environment variables this value is made of."""
        return tuple(_VAR.findall(self.template))

    def resolve(self, environ: Optional[Mapping[str, str]] = None) -> str:
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


def resolve_settings(settings: Any, environ: Optional[Mapping[str, str]] = None) -> Any:
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


def substitute_env(value: Any, path: str, environ: Optional[Mapping[str, str]] = None) -> Any:
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


def load_config(path: str, environ: Optional[Mapping[str, str]] = None) -> JobConfig:
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


def parse_config(raw: Any, environ: Optional[Mapping[str, str]] = None) -> JobConfig:
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
        computed = ComputedSet(raw.get("computed_traits"), "computed_traits")
        audiences = AudienceSet(raw.get("audiences") or [], "audiences", computed)
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
    return JobConfig(name, aid, audiences, works, raw=raw, max_ts_skew=max_ts_skew,
                     identity=parse_identity(raw.get("identity")))


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
    if not isinstance(workflow, str) or workflow not in WORKFLOWS:
        names = list(WORKFLOWS)
        raise ConfigError("%s.workflow: unknown workflow %r%s; one of %s"
                          % (path, workflow, did_you_mean(workflow, names), ", ".join(names)))
    work_id = item.get("id") or "%s-%d" % (workflow, i + 1)
    if not isinstance(work_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", work_id):
        raise ConfigError(path + ".id: must be letters, digits, '.', '_' or '-'")
    config = item.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(path + ".config: must be a mapping")
    check_keys(config, WORKFLOWS[workflow].config_keys, path + ".config")
    # ``paused`` belongs to the work; it is also taken inside ``config``, where it is easily put.
    paused = read_bool(item, "paused", path)
    if "paused" in config:
        in_config = read_bool(config, "paused", path + ".config")
        if "paused" in item and in_config != paused:
            raise ConfigError("%s.config.paused: differs from %s.paused; set it in one place"
                              % (path, path))
        paused = in_config
    work = Work(i, work_id, workflow, config, item.get("label"), item.get("description"), paused)
    work.settings = WORKFLOWS[workflow].parse(path + ".config", config, work, audiences)
    return work


def destinations(job: JobConfig) -> List[Tuple[str, str, int, bool]]:
    """(config path, host, port, allow_private_network) of every network destination of the job's
    works (paused ones too: they send once resumed), as each workflow names it
    (``core.workflows.Workflow.destination``)."""
    found = (WORKFLOWS[work.workflow].destination(work) for work in job.works)
    return [d for d in found if d is not None]


def check_destinations(job: JobConfig, resolve: Callable[..., Any] = socket.getaddrinfo) -> List[str]:
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
