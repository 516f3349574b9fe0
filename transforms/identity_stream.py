"""Identity stitching in the stream's incremental form (docs/decisions/0004, section "Stream").

``StitchAndEvaluateStream`` replaces ``transforms.identity.StitchAndEvaluate`` when timers fire
as the watermark moves (``--streaming``, a live input). Same input (``((key_field, key), group)``)
and outputs (``changes``, ``export``, ``deadletter``); two stateful stages around the pure
``core.identity_stream``:

* **Stage A**, keyed by ``("anonymous_id", A)``: the anonymous-only groups and one claim per
  identify. It evaluates A's own profile as ``transforms.audiences`` does (pending bag, WAKE timer),
  keeps the link (``core.identity_stream.AnonymousLink``) and, from ``process`` only, sends stage K
  merges, forwarded rows and cancels, each with a timestamp at or after its input element's (so
  it holds K's watermark while in flight). Its timer closes A at the merge time (the exit with
  ``merged_into``), makes the link final and dead-letters the conflicting claims.
* **Stage K**, keyed by ``("user_id", K)``: ``transforms.audiences.EvaluateStatefulFn`` with two
  more kinds of bag entries (merges and forwarded rows, marked by ``MERGE_MARK``/``FORWARD_MARK``)
  and the set of cancelled links; its wake-up runs ``core.identity.advance_with_merges``.

Identifies stay their user's events (routed by ``user_id``); their claims go to stage A only.
Metrics: those of ``transforms.audiences``, ``identity:merges``, ``identity:forwarded_events``,
``identity:conflicting_claims``, ``identity:cancelled_links``, ``identity:cancelled_entries``,
``identity:late_claims`` (all six in ``summary.json``).
"""
import pickle
import typing

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.timestamp import Timestamp

from cdp_activation.core.blocks import pack_rows, unpack_rows
from cdp_activation.core.engine import Stats
from cdp_activation.core.identity import advance_with_merges, close_anonymous
from cdp_activation.core.identity_stream import (CANCEL, FORWARD, MERGE, AnonymousLink, LinkEntry, Send,
                                  entry_of, finalize, merge_of, route_rows,
                                  take_claim, take_due)
from cdp_activation.core.records import ProfileEvent
from cdp_activation.transforms.audiences import CHANGES, EXPORT, EvaluateStatefulFn, emit_evaluation
from cdp_activation.transforms.identity import (BY_USER, DEADLETTER, StitchAndEvaluate,
                                                changes_and_export_rows, conflict_dead_letter,
                                                same_element)
from cdp_activation.transforms.live import timer_at
from cdp_activation.transforms.read import TS_INDEX, events_from_wire

_ANONYMOUS_ID = ProfileEvent._fields.index("anonymous_id")
ROWS, CLAIM = "r", "c"
ANONYMOUS, TO_USER = "anonymous", "to_user"
#: Bag entries of stage K besides packed rows (``core.blocks`` uses ``m``, ``p``, ``M``;
#: ``transforms.audiences`` ``s`` and ``a``) and the cancel message.
MERGE_MARK, FORWARD_MARK, CANCEL_MARK = b"G", b"F", b"X"
_MARKS = {MERGE: MERGE_MARK, FORWARD: FORWARD_MARK}
BY_ANONYMOUS = typing.Tuple[typing.Tuple[str, str], typing.Any]


@no_annotations
def route_stream(element: typing.Tuple[typing.Tuple[str, str], typing.Any]
                 ) -> typing.Iterator[typing.Any]:
    """Anonymous-only groups to stage A (tagged ``anonymous``); a user's group to stage K whole,
    and each identify in it as a claim to its anonymous id, stamped with its ``ts``."""
    key, group = element
    if key[0] != "user_id":
        yield beam.pvalue.TaggedOutput(ANONYMOUS, (key, (ROWS, group)))
        return
    yield element
    for row in unpack_rows(group):
        if row[_ANONYMOUS_ID]:
            yield beam.pvalue.TaggedOutput(ANONYMOUS, TimestampedValue(
                (("anonymous_id", row[_ANONYMOUS_ID]), (CLAIM, tuple(row))),
                Timestamp(micros=row[TS_INDEX])))


class _Evaluated(typing.NamedTuple):
    changes: beam.PCollection
    export: beam.PCollection
    deadletter: beam.PCollection   # conflicting claims (``transforms.identity.conflict_dead_letter``)


def encode_send(send: Send) -> bytes:
    """A :class:`core.identity_stream.Send` as stage K's element value."""
    if send.kind == CANCEL:
        return CANCEL_MARK + pickle.dumps(send.link, protocol=5)
    return _MARKS[send.kind] + pickle.dumps(tuple(entry_of(send)), protocol=5)


def _rows_of(pending):
    return [tuple(r) for packed in pending.read() for r in unpack_rows(packed)]


class _StageFn(EvaluateStatefulFn):
    """What both stages change in the parent: wake-ups strictly after the watermark passed.

    The parent sets its timer at T and evaluates up to the firing time. The DirectRunner fires a
    timer at T once the watermark reaches T (``<=``), while an element at exactly T is still on
    time: a merge at M emitted by stage A could then reach K after K's wake-up at M (seen with
    TestStream, slices ending on event times). So each stage sets its timer just after the time
    it waits for (``timer_at(t + 1)``) and a wake-up fired at F evaluates up to F - 1 us: every
    element dated up to then is on every runner in hand. Messages keep their exact times.
    """

    _link_at = None   # stage A: the merge time of a link not final (one more wake-up)

    def __init__(self, spec):
        super().__init__(spec, False)

    def _save(self, state, wake, user, flush_at, as_of, done=False):
        super()._save(state, wake, user, flush_at, as_of, done)  # USER; the timer is set below
        if done:
            return
        candidates = [t for t in (flush_at, self._engine.next_wake(user), self._link_at)
                      if t is not None]
        if candidates:
            at = min(candidates)
            wake.set(timer_at((as_of if as_of is not None and at > as_of else at) + 1))


def _before(fired, as_of):
    """The time a wake-up fired at ``fired`` evaluates up to: just before it; or, when that
    reaches the run's as-of time, ``fired`` itself, which the parent's logic takes as the last
    wake-up (it evaluates up to the as-of time and sets no timer again)."""
    if as_of is not None and fired.micros - 1 >= as_of:
        return fired
    return Timestamp(micros=fired.micros - 1)


class _AnonymousStreamFn(_StageFn):
    """Stage A: A's own evaluation (the parent's), its link, and what it sends stage K."""

    LINK = ReadModifyWriteStateSpec("link", BytesCoder())
    # A timer spec takes one callback: this class's own (the parent's has the parent's wake_up).
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)

    def setup(self):
        super().setup()
        self._conflicts = Metrics.counter("identity", "conflicting_claims")
        self._cancelled = Metrics.counter("identity", "cancelled_links")
        self._late_claims = Metrics.counter("identity", "late_claims")

    def _send(self, sends):
        for send in sends:
            if send.kind == CANCEL:
                self._cancelled.inc()
            yield beam.pvalue.TaggedOutput(TO_USER, TimestampedValue(
                (("user_id", send.user_id), encode_send(send)), Timestamp(micros=send.timestamp)))

    def _dead_letters(self, link, rows):
        if rows:
            self._conflicts.inc(len(rows))
        for row in rows:
            yield beam.pvalue.TaggedOutput(DEADLETTER, conflict_dead_letter(link.claim, row))

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(EvaluateStatefulFn.USER_STATE),
                pending=beam.DoFn.StateParam(EvaluateStatefulFn.PENDING),
                link_state=beam.DoFn.StateParam(LINK),
                wake=beam.DoFn.TimerParam(WAKE)):
        return self._take(element, None, timestamp, state, pending, link_state, wake)

    def _take(self, element, as_of, timestamp, state, pending, link_state, wake):
        key, (kind, body) = element
        link = AnonymousLink.loads(link_state.read())
        if kind == ROWS:
            rows = [tuple(r) for r in unpack_rows(body)]
            keep, sends = route_rows(link, rows)
            yield from self._send(sends)
            if link.at is not None and len(keep) < len(rows):
                link_state.write(link.dumps())   # rows forwarded under a link not final
            if keep:
                self._link_at = link.at
                yield from self._process((key, keep), as_of, timestamp, state, pending, wake)
            return
        user, flush_at, stored_as_of, done = self._load(state)
        as_of = as_of if as_of is not None else stored_as_of
        if as_of is not None and body[TS_INDEX] > as_of:
            return   # after the run's as-of time: no claim (its identify waits at its user)
        outcome = take_claim(link, body, user.clock, lambda: _rows_of(pending),
                             lambda: self._engine.dump_state(user))
        if outcome.late:
            self._late_claims.inc()
        yield from self._send(outcome.sends)
        yield from self._dead_letters(link, outcome.conflicts)
        if outcome.keep is not None:
            pending.clear()
            if outcome.keep:
                pending.add(pack_rows(outcome.keep))
            flush_at = max(r[TS_INDEX] for r in outcome.keep) if outcome.keep else None
        link_state.write(link.dumps())
        if not link.final and outcome.sends:
            self._link_at = link.at
            self._save(state, wake, user, flush_at, as_of, done)

    @on_timer(WAKE)
    def wake_up(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(EvaluateStatefulFn.USER_STATE),
                pending=beam.DoFn.StateParam(EvaluateStatefulFn.PENDING),
                link_state=beam.DoFn.StateParam(LINK),
                wake=beam.DoFn.TimerParam(WAKE)):
        link = AnonymousLink.loads(link_state.read())
        at = link.at
        user, _, as_of, _ = self._load(state)
        fired = _before(fired, as_of)
        now = fired.micros if as_of is None else min(fired.micros, as_of)
        self._link_at = at
        if at is None or now < at:
            yield from EvaluateStatefulFn.wake_up(self, key, fired, state, pending, wake)
            return
        # The watermark passed M: A closes (evaluated to M - 1, then its exit) and the link is final.
        stats = Stats()
        changes, export, exit_change, after = close_anonymous(
            self._engine, user, events_from_wire(_rows_of(pending)), at, link.claim.user_id, stats)
        if after:   # rows from M on are forwarded when they arrive; none can wait here
            raise AssertionError("anonymous rows from the merge on waited in stage A")
        if exit_change is not None:
            changes.append(exit_change)
        self._metrics.record(stats, changes)
        yield from emit_evaluation(key, changes, export)
        yield from self._dead_letters(link, finalize(link))
        link_state.write(link.dumps())
        pending.clear()
        state.clear()
        wake.clear()


class _KnownStreamFn(_StageFn):
    """Stage K: the parent's evaluation with merges, forwarded rows and cancelled links."""

    CANCELLED = ReadModifyWriteStateSpec("cancelled", BytesCoder())
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)

    def setup(self):
        super().setup()
        self._merges = Metrics.counter("identity", "merges")
        self._forwarded = Metrics.counter("identity", "forwarded_events")
        self._dropped = Metrics.counter("identity", "cancelled_entries")

    @staticmethod
    def _cancelled_links(cancelled):
        raw = cancelled.read()
        return set() if raw is None else pickle.loads(raw)

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(EvaluateStatefulFn.USER_STATE),
                pending=beam.DoFn.StateParam(EvaluateStatefulFn.PENDING),
                cancelled=beam.DoFn.StateParam(CANCELLED),
                wake=beam.DoFn.TimerParam(WAKE)):
        return self._take(element, None, timestamp, state, pending, cancelled, wake)

    def _take(self, element, as_of, timestamp, state, pending, cancelled, wake):
        key, group = element
        mark = group[:1] if isinstance(group, bytes) else None
        if mark not in (MERGE_MARK, FORWARD_MARK, CANCEL_MARK):
            yield from self._process(element, as_of, timestamp, state, pending, wake)
            return
        if mark == CANCEL_MARK:
            links = self._cancelled_links(cancelled)
            links.add(pickle.loads(group[1:]))
            cancelled.write(pickle.dumps(links, protocol=5))
            return
        entry = LinkEntry(*pickle.loads(group[1:]))
        user, flush_at, stored_as_of, done = self._load(state)
        as_of = as_of if as_of is not None else stored_as_of
        clock, changed = user.clock, False
        late = [r for r in entry.rows if r[TS_INDEX] <= clock] if entry.kind == FORWARD else (
            list(entry.rows) if entry.link[1] <= clock else [])
        is_late_merge = entry.kind == MERGE and entry.link[1] <= clock
        if late or is_late_merge:
            if entry.link in self._cancelled_links(cancelled):
                self._dropped.inc()
                return
            stats = Stats()
            if entry.kind == MERGE and entry.state is not None:   # a late merge: at the clock
                self._merges.inc()
                changes, export = advance_with_merges(
                    self._engine, user, [], [merge_of(self._engine, entry.link, entry.state,
                                                      events_from_wire(late))], clock, stats)
            else:   # forwarded rows, or a piece after its merge: the user's late events
                if entry.kind == FORWARD:
                    self._forwarded.inc(len(late))
                changes, export = self._engine.advance(user, events_from_wire(late), clock, stats)
            self._metrics.record(stats, changes)
            yield from emit_evaluation(key, changes, export)
            changed = True
            entry = None if is_late_merge else entry._replace(
                rows=tuple(r for r in entry.rows if r[TS_INDEX] > clock))
        if entry is not None and (entry.kind == MERGE or entry.rows):
            pending.add(_MARKS[entry.kind] + pickle.dumps(tuple(entry), protocol=5))
            if done:
                self._metrics.record_pending(0, len(entry.rows))
            elif flush_at is None:
                flush_at = entry.time
                changed = True
        if changed or as_of != stored_as_of:
            self._save(state, wake, user, flush_at, as_of, done)

    @on_timer(WAKE)
    def wake_up(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(EvaluateStatefulFn.USER_STATE),
                pending=beam.DoFn.StateParam(EvaluateStatefulFn.PENDING),
                cancelled=beam.DoFn.StateParam(CANCELLED),
                wake=beam.DoFn.TimerParam(WAKE)):
        user, _, as_of, _ = self._load(state)
        now = _before(fired, as_of).micros
        last = as_of is not None and now > as_of
        if last:
            now = as_of
        own, entries = [], []
        for packed in pending.read():
            if packed[:1] in (MERGE_MARK, FORWARD_MARK):
                entries.append(LinkEntry(*pickle.loads(packed[1:])))
            else:
                own.extend(unpack_rows(packed))
        due = take_due(entries, self._cancelled_links(cancelled) if entries else set(), now)
        if due.dropped:
            self._dropped.inc(due.dropped)
        rest = [r for r in own if r[TS_INDEX] > now]
        if own or entries:
            pending.clear()
        if rest:
            pending.add(pack_rows(rest))
        for entry in due.waiting:
            pending.add(_MARKS[entry.kind] + pickle.dumps(tuple(entry), protocol=5))
        merges = [merge_of(self._engine, link, state_bytes, events_from_wire(rows))
                  for link, state_bytes, rows in due.merges]
        if merges:
            self._merges.inc(len(merges))
        if due.forwarded:
            self._forwarded.inc(len(due.forwarded))
        stats = Stats()
        changes, export = advance_with_merges(
            self._engine, user, events_from_wire([r for r in own if r[TS_INDEX] <= now]
                                                 + due.forwarded), merges, now, stats)
        self._metrics.record(stats, changes)
        yield from emit_evaluation(key, changes, export)
        times = [r[TS_INDEX] for r in rest] + [e.time for e in due.waiting]
        if last:
            self._metrics.record_pending(int(self._engine.next_wake(user) is not None),
                                         len(rest) + sum(len(e.rows) for e in due.waiting
                                                         if e.kind == FORWARD))
        self._save(state, wake, user, max(times) if times else None, as_of, done=last)


class _AnonymousStreamAsOfFn(_AnonymousStreamFn):
    """:class:`_AnonymousStreamFn` with the run's as-of time as a side input."""

    # ``as_of`` has a default only for Beam's type check, which binds the main input alone.
    def process(self, element, as_of=None, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(EvaluateStatefulFn.USER_STATE),
                pending=beam.DoFn.StateParam(EvaluateStatefulFn.PENDING),
                link_state=beam.DoFn.StateParam(_AnonymousStreamFn.LINK),
                wake=beam.DoFn.TimerParam(_AnonymousStreamFn.WAKE)):
        return self._take(element, as_of, timestamp, state, pending, link_state, wake)


class _KnownStreamAsOfFn(_KnownStreamFn):
    """:class:`_KnownStreamFn` with the run's as-of time as a side input."""

    def process(self, element, as_of=None, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(EvaluateStatefulFn.USER_STATE),
                pending=beam.DoFn.StateParam(EvaluateStatefulFn.PENDING),
                cancelled=beam.DoFn.StateParam(_KnownStreamFn.CANCELLED),
                wake=beam.DoFn.TimerParam(_KnownStreamFn.WAKE)):
        return self._take(element, as_of, timestamp, state, pending, cancelled, wake)


class StitchAndEvaluateStream(StitchAndEvaluate):
    """:class:`transforms.identity.StitchAndEvaluate`'s outputs from the incremental stages
    (timers firing as the watermark moves). ``as_of``: as for
    ``transforms.audiences.EvaluateAudiencesStateful``."""

    @no_annotations
    def expand(self, groups: beam.PCollection[typing.Tuple[typing.Tuple[str, str], typing.Any]]
               ) -> "_Evaluated":
        side = () if self.as_of is None else (beam.pvalue.AsSingleton(self.as_of),)
        routed = (groups
                  | "IntoGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
                  | "RouteIdentities" >> beam.FlatMap(route_stream).with_outputs(ANONYMOUS,
                                                                                  main="known"))
        anonymous = (routed[ANONYMOUS]
                     | "TypedAnonymous" >> beam.Map(same_element).with_output_types(BY_ANONYMOUS)
                     | "EvaluateAnonymous" >> beam.ParDo(
                         (_AnonymousStreamFn if self.as_of is None else _AnonymousStreamAsOfFn)(
                             self._spec), *side)
                     .with_outputs(EXPORT, TO_USER, DEADLETTER, main=CHANGES))
        known = ((routed.known | "TypedKnown" >> beam.Map(same_element).with_output_types(BY_USER),
                  anonymous[TO_USER] | "TypedForwarded" >> beam.Map(same_element)
                  .with_output_types(BY_USER))
                 | "WithForwarded" >> beam.Flatten()
                 | "EvaluateKnown" >> beam.ParDo(
                     (_KnownStreamFn if self.as_of is None else _KnownStreamAsOfFn)(self._spec),
                     *side)
                 .with_outputs(EXPORT, main=CHANGES))
        changes, export = changes_and_export_rows(anonymous, known)
        return _Evaluated(changes, export, anonymous[DEADLETTER])
