"""Brute-force reference for identity stitching (docs/decisions/0004, docs/SEMANTICS.md).

Shares no code with ``core``: it uses ``tests/reference.py``'s record parsing and condition
evaluation and re-evaluates every profile from scratch at every candidate time over the merged
histories. The rules, as the decision states them:

* An identify (a record with both ``anonymous_id`` and ``user_id``) claims the anonymous id for its
  user at its ``ts``; per anonymous id the first claim by (``ts``, ``event_id``) wins, at the merge
  time M. Later claims by other users are conflicts (no link).
* The anonymous profile A holds its anonymous-only events dated before M; its candidate times are
  those before M; at M every membership it has exits in one message with ``merged_into``.
* A's events dated at or after M are the known user K's own events.
* K's events at T: its own with ``ts <= T``, and for every merge with M <= T, A's events before M
  (each counts in a window while ``T < ts + within``). K's candidate times: its own events' times
  and window ends, each M, and the window ends after M of the merged events.
* K's traits at T: its own events in (``ts``, ``event_id``) order; before the first own event at or
  after a merge's M (merges in (M, anonymous id) order), the traits A has as of M and K lacks
  are added.

    reference_stitched_outputs(config, lines, as_of=None) -> {"eventhub": ..., "blob": ...,
        "deadletter": [...], "conflicts": [(anonymous_id, user_id, event_id), ...]}
    reference_stitched_transitions(config, lines, as_of=None) ->
        {(key field, key): [(T, ((slug, kind, enter), ...), merged_into or None), ...]}
"""
from __future__ import annotations

from tests import reference as ref

class Profile(ref.UserModel):
    """One profile after stitching: its own events and the merged anonymous histories."""

    def __init__(self, key, own, audiences, computed=None):
        super().__init__(key, own, audiences, computed)
        self.merges = []          # (M, anonymous id, [events before M], A's Profile)
        self.closes_at = None     # M, for an anonymous profile merged into a user
        self.merged_into = None   # that user's Profile

    def add_merge(self, at, anon, anon_profile):
        self.merges.append((at, anon, list(anon_profile.events), anon_profile))
        self.merges.sort(key=lambda m: (m[0], m[1]))
        self._traits_cache.clear()
        self._cond_cache.clear()

    def events_at(self, T):
        out = [e for e in self.events if e.ts <= T]
        for at, _anon, evs, _p in self.merges:
            if at <= T:
                out.extend(evs)
        return out

    def own_traits_at(self, T):
        """Traits from the profile's own events alone (an anonymous profile's at its merge)."""
        traits = {}
        for e in self.events:
            if e.ts > T:
                break
            for k, v in e.traits.items():
                if v is None:
                    traits.pop(k, None)
                else:
                    traits[k] = v
        return traits

    def traits_at(self, T):
        if self.closes_at is not None and T >= self.closes_at:
            return self.merged_into.traits_at(T)   # exports of A's later events: K's traits
        if T in self._traits_cache:
            return self._traits_cache[T]
        traits = {}
        pending = [m for m in self.merges if m[0] <= T]

        def fill(merge):
            for k, v in merge[3].own_traits_at(merge[0]).items():
                traits.setdefault(k, v)
        for e in self.events:
            if e.ts > T:
                break
            while pending and pending[0][0] <= e.ts:
                fill(pending.pop(0))
            for k, v in e.traits.items():
                if v is None:
                    traits.pop(k, None)
                else:
                    traits[k] = v
        for m in pending:
            fill(m)
        self._traits_cache[T] = traits
        return traits

    def computed_at(self, name, T):
        """A computed trait over the merged history (an anonymous profile's after its merge:
        the user's, as for traits)."""
        if self.closes_at is not None and T >= self.closes_at:
            return self.merged_into.computed_at(name, T)
        events = sorted(self.events_at(T), key=lambda e: (e.ts, e.event_id))
        return ref.computed_value(self.computed[name], events, T)

    def first_at(self, T):
        return min(e.ts for e in self.events_at(T))

    def modified_at(self, T):
        return max(e.ts for e in self.events_at(T))

    def count(self, node, T):
        within = ref.parse_duration(node["within"]) if node.get("within") is not None else None
        n = 0
        for e in self.events_at(T):
            if node["event"] != "*" and e.name != node["event"]:
                continue
            if not (e.ts <= T and (within is None or T < e.ts + within)):
                continue
            if node.get("where") is not None and not ref.eval_where(node["where"], e.properties):
                continue
            n += 1
        return n

    def points(self, withins, extra=(), as_of=None):
        pts = set()
        for e in self.events:
            pts.add(e.ts)
            pts.update(e.ts + w for w in withins)
        for at, _anon, evs, _p in self.merges:
            pts.add(at)
            pts.update(e.ts + w for e in evs for w in withins if e.ts + w > at)
        pts.update(x for x in extra if x >= self.first_ts)
        return sorted(p for p in pts if (as_of is None or p <= as_of)
                      and (self.closes_at is None or p < self.closes_at))


def resolve(events):
    """-> ({anonymous id: (M, user id)}, [(anonymous id, user id, event_id) conflicts])"""
    claims = {}
    for e in events:
        if e.user_id and e.anonymous_id:
            claims.setdefault(e.anonymous_id, []).append(e)
    links, conflicts = {}, []
    for anon, made in sorted(claims.items()):
        made.sort(key=lambda e: (e.ts, e.event_id))
        links[anon] = (made[0].ts, made[0].user_id)
        for e in made[1:]:
            c = (anon, e.user_id, e.event_id)
            if e.user_id != made[0].user_id and c not in conflicts:
                conflicts.append(c)
    return links, conflicts


def build_profiles(config, events):
    by_ref = {}
    for a in config["audiences"]:
        by_ref[a["slug"]] = a
        if a.get("id"):
            by_ref[a["id"]] = a
    links, conflicts = resolve(events)
    own = {}
    for e in events:
        if e.user_id:
            own.setdefault(("user_id", e.user_id), []).append(e)
        else:
            link = links.get(e.anonymous_id)
            if link is not None and e.ts >= link[0]:
                own.setdefault(("user_id", link[1]), []).append(e)
            else:
                own.setdefault(("anonymous_id", e.anonymous_id), []).append(e)
    profiles = {k: Profile(k, evs, by_ref, config.get("computed_traits"))
                for k, evs in own.items()}
    for anon, (at, user) in sorted(links.items()):
        known = profiles[("user_id", user)]     # the identify is the user's own event
        a = profiles.get(("anonymous_id", anon))
        if a is None:
            continue                            # no anonymous history before M
        a.closes_at, a.merged_into = at, known
        known.add_merge(at, anon, a)
    return profiles, conflicts


def timeline(profile, audiences, withins, extra=(), as_of=None):
    points = profile.points(withins, extra, as_of)
    states, spans = {}, {}
    for aud in audiences:
        vals = [profile.member(aud["slug"], T) for T in points]
        states[aud["slug"]] = vals
        sp, prev = [], False
        for T, v in zip(points, vals):
            if v and not prev:
                sp.append([T, None])
            elif prev and not v:
                sp[-1][1] = T
            prev = v
        spans[aud["slug"]] = [tuple(s) for s in sp]
    return points, states, spans


def _message(profile, T, sub_id, user_fields, seg_events, backfill=False, merged_into=None,
             computed_fields=()):
    traits = profile.own_traits_at(T) if merged_into is not None else profile.traits_at(T)
    data = {}
    fields = user_fields if user_fields is not None else list(traits.keys())
    for f in fields:
        if f in traits and traits[f] is not None:
            data[f] = traits[f]
    for name in computed_fields if merged_into is None else ():  # a merge exit carries none
        value = profile.computed_at(name, T)
        if value is not None:
            data[name] = value
    data[profile.key[0]] = profile.key[1]
    data["_created"] = ref.fmt_time(profile.first_at(T))
    data["_modified"] = ref.fmt_time(profile.modified_at(T))
    if merged_into is not None:
        data["merged_into"] = merged_into
    data["segment_events"] = seg_events
    msg = {"data": data, "subscription_id": sub_id, "timestamp": ref.fmt_time(T)}
    if backfill:
        msg["backfill"] = True
    msg["message_id"] = ref.sha256_hex(ref.canonical(msg))[:32]
    return msg


def eventhub_messages(config, profiles, withins, work, as_of=None):
    wc = work["config"]
    auds = ref._work_audiences(config, wc)
    sub_id = wc.get("subscription_id") or work["id"]
    start = ref.parse_time(wc["start"]) if wc.get("start") not in (None, "") else None
    backfill = bool(wc.get("existing_users")) and start is not None
    if as_of is not None and start is not None and start > as_of:
        backfill = False
    user_fields = wc.get("user_fields")
    computed = wc.get("computed_fields") or ()
    out = []
    for key in sorted(profiles):
        p = profiles[key]
        extra = [start] if start is not None else []
        points, states, spans = timeline(p, config["audiences"], withins, extra, as_of)
        if backfill and (p.closes_at is None or start < p.closes_at):
            segs = [ref._seg(a, "enter", ref.enter_time_before(spans[a["slug"]], start), None)
                    for a in auds if ref.state_before(points, states[a["slug"]], start)]
            if segs:
                out.append(_message(p, start, sub_id, user_fields, segs, backfill=True,
                                    computed_fields=computed))
        changes, prev, entered = ref.transition_segments(auds, points, states)
        for T, segs in changes:
            if segs and (start is None or T >= start):
                out.append(_message(p, T, sub_id, user_fields, segs, computed_fields=computed))
        M = p.closes_at
        if M is not None and (as_of is None or M <= as_of):
            segs = [ref._seg(a, "exit", entered[a["slug"]], M) for a in auds if prev[a["slug"]]]
            if segs and (start is None or M >= start):
                out.append(_message(p, M, sub_id, user_fields, segs,
                                    merged_into=p.merged_into.key[1]))
    return out


def reference_stitched_outputs(config, lines, environ=None, as_of=None):
    """As ``reference.reference_outputs`` with ``identity: {stitch: true}``, plus the conflicts."""
    config = ref.normalise_config(config, environ or {})
    events, systems, dead, latest = ref.parse_lines(lines, with_as_of=True,
                                                    max_ts_skew=ref.config_max_ts_skew(config))
    if as_of is None:
        as_of = latest
    if as_of is not None:
        events = [e for e in events if e.ts <= as_of]
    profiles, conflicts = build_profiles(config, events)
    withins = ref.config_withins(config)
    by_record = dict(profiles)   # the profile whose traits an exported record carries
    for anon, (_at, user) in resolve(events)[0].items():
        by_record.setdefault(("anonymous_id", anon), profiles[("user_id", user)])
    out = {"eventhub": {}, "blob": {}, "deadletter": dead, "conflicts": conflicts}
    for work in config["works"]:
        if work.get("paused"):
            continue
        if work["workflow"] == "eventhub_audience_export":
            out["eventhub"][work["id"]] = eventhub_messages(config, profiles, withins, work, as_of)
        elif work["workflow"] == "azure_blob_event_export":
            out["blob"][work["id"]] = ref.blob_files(config, events, systems, by_record, work)
    return out


def reference_stitched_transitions(config, lines, as_of=None):
    """Per profile its transitions: ``[(T, ((slug, kind, enter), ...), merged_into or None)]``
    with times in microseconds, kinds sorted by the config's audience order."""
    config = ref.normalise_config(config, {})
    events, _systems, _dead = ref.parse_lines(lines, ref.config_max_ts_skew(config))
    if as_of is not None:
        events = [e for e in events if e.ts <= as_of]
    profiles, _conflicts = build_profiles(config, events)
    withins = ref.config_withins(config)
    slugs = [a["slug"] for a in config["audiences"]]
    out = {}
    for key, p in profiles.items():
        points, states, spans = timeline(p, config["audiences"], withins, (), as_of)
        rows, prev, entered = [], {s: False for s in slugs}, {}
        for i, T in enumerate(points):
            ch = []
            for s in slugs:
                v = states[s][i]
                if v and not prev[s]:
                    entered[s] = T
                    ch.append((s, "enter", T))
                elif prev[s] and not v:
                    ch.append((s, "exit", entered[s]))
                prev[s] = v
            if ch:
                rows.append((T, tuple(ch), None))
        if p.closes_at is not None and (as_of is None or p.closes_at <= as_of):
            ch = tuple((s, "exit", entered[s]) for s in slugs if prev[s])
            if ch:
                rows.append((p.closes_at, ch, p.merged_into.key[1]))
        if rows:
            out[key] = rows
    return out
