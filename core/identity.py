"""Identity stitching: an anonymous profile merged into a known user (docs/decisions/0004).

Pure (no Beam): the rules and the state operations that the stream's two stages and the replay
share, so that both give the same results.

* An *identify* is a profile event with both ``anonymous_id`` and ``user_id``; it claims the
  anonymous id for its user at its ``ts``. The earliest claim by (``ts``, ``event_id``) wins
  (:func:`winning_claim`); a later claim by another user is a *conflict*, ignored for linking.
* The anonymous profile A is evaluated on its events before the merge time M
  (:func:`close_anonymous`): its state is advanced to ``M - 1`` and every membership it holds exits
  at M in one :class:`MergeExit` naming the user it merged into. Its events dated at or after M are
  the known user's.
* The known user K takes A's engine state at M (:func:`merge_state`: windowed timestamps united
  and cut to the cap, all-time counts added and saturated, traits A has and K lacks added, first
  and last times, dedupe keys), and every audience of K is evaluated again at M
  (:func:`advance_with_merges`).
* :func:`stitch_histories` applies all of it to whole histories: the replay's evaluation, and the
  shape the stream's stages follow element by element.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Optional

from cdp_activation.core.engine import Engine, ExportRow, Stats, UserChange, UserState
from cdp_activation.core.records import ProfileEvent
from cdp_activation.core.state import decode_document, encode_document
from cdp_activation.core.values import ConfigError, check_keys, read_bool

#: The keys of the config's ``identity`` section.
IDENTITY_KEYS = ("stitch",)


class IdentitySettings(NamedTuple):
    """The config's ``identity`` section: ``stitch`` turns stitching on (off by default)."""
    stitch: bool = False


def parse_identity(raw: Any, path: str = "identity") -> IdentitySettings:
    """The ``identity`` section of a job config (None: absent). Unknown keys are errors."""
    if raw is None:
        return IdentitySettings()
    if not isinstance(raw, dict):
        raise ConfigError("%s: must be a mapping" % path)
    check_keys(raw, IDENTITY_KEYS, path)
    return IdentitySettings(stitch=read_bool(raw, "stitch", path))


class Claim(NamedTuple):
    """An identify's claim of an anonymous id for a user at ``ts``."""
    ts: int
    event_id: str
    user_id: str
    anonymous_id: str


class MergeExit(NamedTuple):
    """The anonymous profile's memberships exiting at the merge time: a
    :class:`core.engine.UserChange` (the same seven fields) plus the user it merged into."""
    time: int
    changes: tuple[tuple[int, str, int], ...]   # (audience index, "exit", enter time)
    traits: dict
    first_ts: int
    last_ts: int
    backfill: bool
    computed: Optional[dict]   # as a UserChange's; None: the exit message carries none
    merged_into: str


class Merge(NamedTuple):
    """What the known user receives at a merge: the time, the anonymous id, the anonymous
    profile's engine state as of ``at - 1`` and the winning identify (an event of the known
    user at ``at``; None when it reaches the known user as its own event, as in the stream's
    incremental form, ``core.identity_stream``)."""
    at: int
    anonymous_id: str
    state: UserState
    identify: Optional[ProfileEvent]


def is_identify(event: ProfileEvent) -> bool:
    """Whether ``event`` carries both ids (an identify)."""
    return bool(event.user_id) and bool(event.anonymous_id)


def claim_of(event: ProfileEvent) -> Claim:
    """The claim an identify makes."""
    return Claim(event.ts, event.event_id, event.user_id, event.anonymous_id)


def claim_order(claim: Claim) -> tuple[int, str]:
    """Claims of one anonymous id are ordered by (``ts``, ``event_id``); the first wins."""
    return claim.ts, claim.event_id


def identify_order(event: ProfileEvent) -> tuple[int, str, int]:
    """The order of identifies: their claims' order, then the first copy received."""
    return event.ts, event.event_id, event.received_at


def winning_claim(claims: Iterable[Claim]) -> Optional[Claim]:
    """The earliest claim (None if there is none)."""
    return min(claims, key=claim_order, default=None)


def is_conflict(claim: Claim, winner: Optional[Claim]) -> bool:
    """Whether ``claim`` is a later claim of the winner's anonymous id by another user."""
    return winner is not None and claim.user_id != winner.user_id


def merge_state(engine: Engine, known: UserState, anon: UserState) -> None:
    """Adds ``anon``'s engine state to ``known``'s, as of ``known.clock``, and marks every
    audience of ``known`` for evaluation at its next point.

    Windowed counts: the two sorted timestamp lists united, without entries whose window closed by
    ``known``'s clock, cut to the newest ``cap`` (the newest ``cap`` entries give every node the
    same answer, see ``core.engine._Due``). All-time counts: added, saturated at ``cap``. Computed
    traits: their entries and aggregates combined (``core.computed``). Traits:
    those ``anon`` has and ``known`` lacks. First and last times: the earlier and the later. Dedupe
    keys: united (a key both hold keeps ``known``'s run). Memberships are ``known``'s.
    """
    clock = known.clock
    for i, spec in enumerate(engine.specs):
        mine, theirs = known.counts[i], anon.counts[i]
        cap = engine.caps[i]
        if spec.within is not None:
            if not theirs:
                continue
            within = spec.within
            united = sorted(t for t in list(mine) + list(theirs) if t + within > clock)
            if len(united) > cap:
                del united[:len(united) - cap]
            known.counts[i] = united
        elif theirs:
            known.counts[i] = min(cap, mine + theirs)
    for name, value in anon.traits.items():
        if name not in known.traits:
            known.traits[name] = value
    if anon.first_ts is not None:
        known.first_ts = anon.first_ts if known.first_ts is None else min(known.first_ts,
                                                                          anon.first_ts)
        known.last_ts = anon.last_ts if known.last_ts is None else max(known.last_ts, anon.last_ts)
    for key, received in anon.seen.items():
        known.seen.setdefault(key, received)
    known.max_received = max(known.max_received, anon.max_received)
    engine.merge_computed(known, anon)
    known.reevaluate |= (1 << len(known.members)) - 1


def merge_exit(anon: UserState, at: int, merged_into: str) -> Optional[MergeExit]:
    """Ends every membership of the anonymous profile at ``at``; the exits in one
    :class:`MergeExit`, or None when it was a member of nothing."""
    exits = tuple((a, "exit", entered) for a, entered in enumerate(anon.members)
                  if entered is not None)
    anon.members = [None] * len(anon.members)
    if not exits:
        return None
    return MergeExit(at, exits, dict(anon.traits), anon.first_ts, anon.last_ts, False, None,
                     merged_into)


def split_at(events: Iterable[ProfileEvent], at: int
             ) -> tuple[list[ProfileEvent], list[ProfileEvent]]:
    """Events before ``at``, and those at or after it."""
    before, after = [], []
    for e in events:
        (before if e.ts < at else after).append(e)
    return before, after


def close_anonymous(engine: Engine, state: UserState, events: Sequence[ProfileEvent], at: int,
                    merged_into: str, stats: Optional[Stats] = None
                    ) -> tuple[list[UserChange], list[ExportRow], Optional[MergeExit],
                               list[ProfileEvent]]:
    """The anonymous profile up to its merge at ``at``: its events before ``at`` applied up to
    ``at - 1`` (later than the clock, else at the clock, as late events), then its exits.

    Returns ``(changes, export rows, merge exit or None, events from ``at`` on)``: the last are
    the known user's. ``state`` is left as the merge hands it on (no membership).
    """
    before, after = split_at(events, at)
    changes, rows = engine.advance(state, before, max(at - 1, state.clock), stats)
    return changes, rows, merge_exit(state, at, merged_into), after


def advance_with_merges(engine: Engine, state: UserState, events: Sequence[ProfileEvent],
                        merges: Sequence[Merge], until: int, stats: Optional[Stats] = None
                        ) -> tuple[list[UserChange], list[ExportRow]]:
    """The known user's events and merges applied up to ``until`` (every merge at or before it).

    Merges are taken in (``at``, anonymous id) order: the events before ``at`` up to ``at - 1``,
    then the anonymous state merged in, then the identify joins the events, so the point ``at``
    evaluates every audience over the merged state. A merge at or before the clock is late: merged
    at the clock, its identify applied there as a late event.
    """
    stats = stats if stats is not None else Stats()
    changes, rows = [], []
    rest = list(events)
    for merge in sorted(merges, key=lambda m: (m.at, m.anonymous_id)):
        if merge.at > until:
            raise ValueError("a merge at %d lies after the evaluation's end %d" % (merge.at, until))
        before, rest = split_at(rest, merge.at)
        c, r = engine.advance(state, before, max(merge.at - 1, state.clock), stats)
        changes += c
        rows += r
        merge_state(engine, state, merge.state)
        if merge.identify is not None:
            rest.append(merge.identify)
    c, r = engine.advance(state, rest, until, stats)
    return changes + c, rows + r


class Link(NamedTuple):
    """A merged anonymous profile's link, as ``--state`` keeps it: the user it merged into and
    the merge time (``merged_into``, ``merged_at`` in the state document, docs/STATE.md)."""
    merged_into: str
    merged_at: int


def dump_profile(engine: Engine, state: UserState, link: Optional[Link] = None) -> bytes:
    """A profile's saved state bytes (``Engine.dump_state``), with the link when merged."""
    document = dict(engine.state_document(state))
    if link is not None:
        document["merged_into"], document["merged_at"] = link
    return encode_document(document)  # type: ignore[arg-type]


def load_profile(engine: Engine, data: bytes) -> tuple[UserState, Optional[Link]]:
    """The state and the link (None: not merged) of :func:`dump_profile` bytes."""
    document = decode_document(data)
    merged_into = document.get("merged_into")
    link = None if merged_into is None else Link(merged_into, document["merged_at"])
    return engine.state_from_document(document), link


class AnonymousOutcome(NamedTuple):
    """:func:`evaluate_anonymous`' result for one anonymous id."""
    changes: list          # its UserChanges, and its MergeExit last when it merged now
    rows: list             # its export rows (events before the merge)
    merge: Optional[Merge]  # what the known user receives, when it merged in this evaluation
    link: Optional[Link]   # its link after this evaluation (a saved one, or the new merge's)
    forwarded: list        # its events that are the known user's (dated from the merge on)
    others: list           # the identifies that did not make the link: events of their users
    conflicts: list        # the claims among them by another user (once per user and event_id)
    state: UserState       # what is saved for it (a merged profile: no memberships, no wake-up)


def evaluate_anonymous(engine: Engine, anonymous_id: str, state: Optional[UserState],
                       link: Optional[Link], history: Sequence[ProfileEvent],
                       identifies: Sequence[ProfileEvent], until: int,
                       stats: Optional[Stats] = None) -> AnonymousOutcome:
    """One anonymous id's evaluation up to ``until``: its saved state and link (from an earlier
    run with ``--state``, else None), its anonymous-only events and the identifies that claim it
    (all dated up to ``until``).

    Without a link, the earliest claim wins: the profile closes at it (:func:`close_anonymous`)
    and its events from then on are forwarded; without a claim it is evaluated as any profile. A
    saved link stands (there is no un-merge): every event is forwarded and every claim loses, as it
    would to the earlier winner in one run over both runs' input.
    """
    stats = stats if stats is not None else Stats()
    state = state if state is not None else engine.new_state()
    if link is not None:
        others = sorted(identifies, key=identify_order)
        winner = Claim(link.merged_at, "", link.merged_into, anonymous_id)
        done = engine.new_state()
        done.clock = max(until, state.clock)
        return AnonymousOutcome([], [], None, link, list(history), others,
                                _conflicts(winner, others), done)
    if not identifies:
        changes, rows = engine.advance(state, history, until, stats)
        return AnonymousOutcome(changes, rows, None, None, [], [], [], state)
    ordered = sorted(identifies, key=identify_order)
    first, others = ordered[0], ordered[1:]
    claim = claim_of(first)
    changes, rows, exit_change, after = close_anonymous(engine, state, history, claim.ts,
                                                        claim.user_id, stats)
    if exit_change is not None:
        changes.append(exit_change)
    merge = Merge(claim.ts, anonymous_id, state, first)
    done = engine.new_state()
    done.clock = max(until, state.clock)
    return AnonymousOutcome(changes, rows, merge, Link(claim.user_id, claim.ts), after, others,
                            _conflicts(claim, others), done)


def _conflicts(winner: Claim, identifies: Iterable[ProfileEvent]) -> list[Claim]:
    out, seen = [], set()
    for event in identifies:
        claim = claim_of(event)
        if is_conflict(claim, winner) and (claim.user_id, claim.event_id) not in seen:
            seen.add((claim.user_id, claim.event_id))
            out.append(claim)
    return out


class ProfileMerge(NamedTuple):
    """An anonymous id a known user won: the winning claim, its identify, and every
    anonymous-only event of the id (those before the merge are its history)."""
    claim: Claim
    identify: ProfileEvent
    events: list


def merges_won(events: Iterable[ProfileEvent], user_id: str
               ) -> tuple[list[ProfileEvent], list[ProfileMerge]]:
    """One known user's part of :func:`stitch_histories`: its own events (the identifies that
    won excepted: a merge brings them) and the anonymous ids it won, in merge order. ``events``
    must hold the user's events and every event carrying the anonymous ids it claims (the other
    users' claims of them decide who wins)."""
    events = list(events)
    winners, identifies, _ = resolve_claims(events)
    won = [anon for anon, claim in winners.items() if claim.user_id == user_id]
    winning = {id(identifies[anon]) for anon in won}
    own = [e for e in events if e.user_id == user_id and id(e) not in winning]
    merges = [ProfileMerge(winners[anon], identifies[anon],
                           [e for e in events if not e.user_id and e.anonymous_id == anon])
              for anon in won]
    return own, sorted(merges, key=lambda m: (m.claim.ts, m.claim.anonymous_id))


def link_of(events: Iterable[ProfileEvent], anonymous_id: str) -> Optional[Claim]:
    """The winning claim of ``anonymous_id`` among ``events`` (None: not claimed)."""
    return resolve_claims(e for e in events if e.anonymous_id == anonymous_id)[0].get(anonymous_id)


class StitchResult(NamedTuple):
    """:func:`stitch_histories`' result: per profile ``(key field, key)`` its changes
    (:class:`core.engine.UserChange` and :class:`MergeExit`, in time order) and export rows, the
    final states, and the conflicting claims."""
    changes: dict
    rows: dict
    states: dict
    conflicts: list


def resolve_claims(events: Iterable[ProfileEvent]
                   ) -> tuple[dict[str, Claim], dict[str, ProfileEvent], list[Claim]]:
    """Per anonymous id its winning claim and the identify that made it, and the conflicting
    claims (once per anonymous id, user and ``event_id``)."""
    claims: dict[str, list[tuple[Claim, ProfileEvent]]] = {}
    for e in events:
        if is_identify(e):
            claims.setdefault(e.anonymous_id, []).append((claim_of(e), e))
    winners, identifies, conflicts = {}, {}, []
    for anon, made in claims.items():
        claim, event = min(made, key=lambda ce: identify_order(ce[1]))
        winners[anon], identifies[anon] = claim, event
        seen = set()
        for other, _ in sorted(made, key=lambda ce: claim_order(ce[0])):
            if is_conflict(other, claim) and other not in seen:
                seen.add(other)
                conflicts.append(other)
    return winners, identifies, conflicts


def stitch_histories(engine: Engine, events: Iterable[ProfileEvent], until: int,
                     stats: Optional[Stats] = None) -> StitchResult:
    """Every profile of ``events`` (all dated at or before ``until``) evaluated with stitching.

    Anonymous profiles with a winning claim close at its time; the known users then take their
    own events, the anonymous events from the merge on, and the merges.
    """
    stats = stats if stats is not None else Stats()
    events = list(events)
    winners, identifies, conflicts = resolve_claims(events)
    winning = {id(e) for e in identifies.values()}
    own: dict[tuple[str, str], list[ProfileEvent]] = {}
    anonymous: dict[str, list[ProfileEvent]] = {}
    for e in events:
        if e.user_id:
            if id(e) not in winning:
                own.setdefault(("user_id", e.user_id), []).append(e)
        else:
            anonymous.setdefault(e.anonymous_id, []).append(e)
    changes: dict[tuple[str, str], list[Any]] = {}
    rows: dict[tuple[str, str], list[ExportRow]] = {}
    states: dict[tuple[str, str], UserState] = {}
    merges: dict[tuple[str, str], list[Merge]] = {}
    for anon in sorted(set(anonymous) | set(winners)):
        key = ("anonymous_id", anon)
        state = engine.new_state()
        history = anonymous.get(anon, [])
        claim = winners.get(anon)
        if claim is None:
            c, r = engine.advance(state, history, until, stats)
            exit_change = None
        else:
            known = ("user_id", claim.user_id)
            c, r, exit_change, after = close_anonymous(engine, state, history, claim.ts,
                                                       claim.user_id, stats)
            own.setdefault(known, []).extend(after)
            merges.setdefault(known, []).append(Merge(claim.ts, anon, state, identifies[anon]))
        if exit_change is not None:
            c = c + [exit_change]
        if c:
            changes[key] = c
        if r:
            rows[key] = r
        states[key] = state
    for key in sorted(set(own) | set(merges)):
        state = engine.new_state()
        c, r = advance_with_merges(engine, state, own.get(key, []), merges.get(key, []), until,
                                   stats)
        if c:
            changes[key] = c
        if r:
            rows[key] = r
        states[key] = state
    return StitchResult(changes, rows, states, conflicts)
