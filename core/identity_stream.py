"""Identity stitching in the stream's incremental form (docs/decisions/0004, section "Stream").

Pure (no Beam): what the two keyed stages of ``transforms.identity_stream`` decide, element by
element, so that whatever the order of arrival ahead of the watermark the result is the one of
``core.identity.stitch_histories`` over the whole history.

Stage A is keyed by anonymous id and holds an :class:`AnonymousLink`: the current winner (the
minimum claim by (``ts``, ``event_id``)), the claims that lost to it, the rows it forwarded under
it and whether the link is final (the watermark passed the merge time M). Everything stage A sends
to stage K is a :class:`Send` made here and emitted from ``process`` with ``timestamp`` at or after
the input element's, so an element in flight holds K's watermark on every runner:

* ``MERGE``: a merge of the link ``(A, M, event_id)`` at M, with A's engine state (the merge-in,
  ``state`` set) or without (a *piece*: rows of A dated before M that arrived after the merge-in);
* ``FORWARD``: rows of A dated at or after M, events of the winner from their own ``ts``;
* ``CANCEL``: the link is void (an earlier claim won); a cancelled link never returns.

Stage K is keyed by user id: :func:`take_due` splits what waits in its bag into what a wake-up at
``now`` applies (forwarded rows, and merges with A's state rebuilt as of ``M - 1``,
:func:`rebuild_anonymous`) and what keeps waiting.

Each identify reaches its user exactly once, as the user's own event (it is routed by its
``user_id``); its claim travels to A alone, so a merge carries no identify (``Merge.identify`` is
None).

Late rules (a claim or event behind the receiver's clock): a claim dated at or before A's clock
never moves an existing link (it is a loser; a conflict if another user's); with no link it links
at ``clock + 1``. After the link is final every event of A goes to the winner as a forwarded row,
applied there as any event (late at K's clock if behind it). Nothing is dropped except what a
cancel voids.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from cdp_activation.core.engine import Engine, UserState
from cdp_activation.core.identity import Claim, Merge, claim_order
from cdp_activation.core.records import ProfileEvent

MERGE, FORWARD, CANCEL = "merge", "forward", "cancel"
_TS = ProfileEvent._fields.index("ts")
_EVENT_ID = ProfileEvent._fields.index("event_id")
_USER_ID = ProfileEvent._fields.index("user_id")
_ANONYMOUS_ID = ProfileEvent._fields.index("anonymous_id")

#: A link: (anonymous id, merge time M, the winning claim's event_id).
LinkKey = tuple


def claim_of_row(row: Sequence[Any]) -> Claim:
    """The claim an identify row (a ``ProfileEvent`` tuple) makes."""
    return Claim(row[_TS], row[_EVENT_ID], row[_USER_ID], row[_ANONYMOUS_ID])


def link_key(claim: Claim) -> LinkKey:
    return claim.anonymous_id, claim.ts, claim.event_id


class Send(NamedTuple):
    """What stage A sends to stage K: to ``user_id``, about ``link``, with Beam timestamp
    ``timestamp``; ``state`` (MERGE only): A's engine state bytes, None for a piece."""
    kind: str
    user_id: str
    link: LinkKey
    timestamp: int
    rows: tuple
    state: Optional[bytes] = None


@dataclass
class AnonymousLink:
    """Stage A's link state for one anonymous id."""
    winner: Optional[tuple] = None            # the winning identify row
    losers: list = field(default_factory=list)     # identify rows that lost (until final)
    forwarded: list = field(default_factory=list)  # rows forwarded under the winner (until final)
    final: bool = False
    dead: set = field(default_factory=set)    # (user_id, event_id) dead-lettered (after final)

    @property
    def claim(self) -> Optional[Claim]:
        return None if self.winner is None else claim_of_row(self.winner)

    @property
    def at(self) -> Optional[int]:
        """The merge time M while the link is not final (what A's wake-ups must reach)."""
        return None if self.winner is None or self.final else self.winner[_TS]

    def dumps(self) -> bytes:
        return pickle.dumps((self.winner, self.losers, self.forwarded, self.final, self.dead),
                            protocol=5)

    @classmethod
    def loads(cls, data: Optional[bytes]) -> "AnonymousLink":
        return cls() if data is None else cls(*pickle.loads(data))


def _forward(claim: Claim, rows: Sequence[tuple]) -> Send:
    return Send(FORWARD, claim.user_id, link_key(claim), min(r[_TS] for r in rows), tuple(rows))


def route_rows(link: AnonymousLink, rows: Sequence[tuple]) -> tuple[list[tuple], list[Send]]:
    """Rows of A arriving: those A keeps (evaluates itself), and what goes to the winner.

    No link: all kept. Final link: all forwarded (not recorded). Otherwise rows before M are kept
    and also sent as a merge piece at M; rows from M on are forwarded and recorded (a later
    winner gets them again).
    """
    claim = link.claim
    if claim is None:
        return list(rows), []
    if link.final:
        return [], [_forward(claim, rows)]
    before = [r for r in rows if r[_TS] < claim.ts]
    after = [r for r in rows if r[_TS] >= claim.ts]
    sends = []
    if before:
        sends.append(Send(MERGE, claim.user_id, link_key(claim), claim.ts, tuple(before)))
    if after:
        link.forwarded.extend(after)
        sends.append(_forward(claim, after))
    return before, sends


class ClaimOutcome(NamedTuple):
    """:func:`take_claim`'s result: what to send, the rows A keeps waiting when the winner
    changed (None: its bag is unchanged), and whether the claim was late."""
    sends: list
    keep: Optional[list]
    late: bool
    conflicts: list   # identify rows to dead-letter now (only after final)


def take_claim(link: AnonymousLink, row: tuple, clock: int, waiting: Callable[[], list],
               dump: Callable[[], bytes]) -> ClaimOutcome:
    """An identify's claim reaching A, whose engine clock is ``clock``.

    ``waiting()`` gives A's pending rows and ``dump()`` its engine state bytes (both called only
    when the claim wins). A winner sends the merge-in (state and pending rows before M), moves
    the pending rows from M on and the rows forwarded under the previous winner to the new one,
    and cancels the previous link. Conflicts are decided when the link is final
    (:func:`finalize`), since an earlier claim may still come and change the winner.
    """
    row = tuple(row)
    claim = claim_of_row(row)
    if link.final:
        conflicts = []
        winner = link.claim
        key = (claim.user_id, claim.event_id)
        if claim.user_id != winner.user_id and key not in link.dead:
            link.dead.add(key)
            conflicts.append(row)
        # late: it would have won had it come before the watermark passed M
        return ClaimOutcome([], None, claim_order(claim) < claim_order(winner), conflicts)
    late = claim.ts <= clock
    current = link.claim
    if current is not None and (late or claim_order(claim) >= claim_order(current)):
        link.losers.append(row)
        return ClaimOutcome([], None, late, [])
    if late:   # no link yet: it links just after A's clock
        row = row[:_TS] + (clock + 1,) + row[_TS + 1:]
        claim = claim_of_row(row)
    pending = waiting()
    before = [r for r in pending if r[_TS] < claim.ts]
    moved = [r for r in pending if r[_TS] >= claim.ts]
    sends = [Send(MERGE, claim.user_id, link_key(claim), claim.ts, tuple(before), dump())]
    if current is not None:
        sends.append(Send(CANCEL, current.user_id, link_key(current), claim.ts, ()))
        link.losers.append(link.winner)
        moved += link.forwarded
    if moved:
        sends.append(_forward(claim, moved))
    link.winner, link.forwarded = row, moved
    return ClaimOutcome(sends, before if len(before) < len(pending) else None, late, [])


def finalize(link: AnonymousLink) -> list[tuple]:
    """The watermark passed M: the link can no longer change. Returns the losing identify rows
    of other users to dead-letter (once per user and ``event_id``, in claim order), and drops the
    forwarded list and the losers."""
    winner = link.claim
    conflicts = []
    for row in sorted(link.losers, key=lambda r: claim_order(claim_of_row(r))):
        key = (row[_USER_ID], row[_EVENT_ID])
        if row[_USER_ID] != winner.user_id and key not in link.dead:
            link.dead.add(key)
            conflicts.append(row)
    link.final, link.losers, link.forwarded = True, [], []
    return conflicts


# -- stage K -----------------------------------------------------------------------------------

class LinkEntry(NamedTuple):
    """A MERGE or FORWARD :class:`Send` as it waits in K's bag."""
    kind: str
    link: LinkKey
    state: Optional[bytes]
    rows: tuple

    @property
    def time(self) -> int:
        """When it is due: M for a merge, the newest row for forwarded rows."""
        return self.link[1] if self.kind == MERGE else max(r[_TS] for r in self.rows)


def entry_of(send: Send) -> LinkEntry:
    return LinkEntry(send.kind, send.link, send.state, send.rows)


def rebuild_anonymous(engine: Engine, state: bytes, rows: Sequence[ProfileEvent], at: int
                      ) -> UserState:
    """A's engine state as of ``at - 1``: the merge-in's state with the pieces' rows applied,
    silently (A emitted its own messages)."""
    anon = engine.load_state(state)
    engine.advance(anon, rows, max(at - 1, anon.clock))
    return anon


class Due(NamedTuple):
    """:func:`take_due`'s result."""
    forwarded: list     # rows due (events of the known user)
    merges: list        # (link, state bytes, rows before M) due, in (M, anonymous id) order
    waiting: list       # LinkEntry still waiting
    dropped: int        # entries of cancelled links


def take_due(entries: Sequence[LinkEntry], cancelled: set, now: int) -> Due:
    """What K's wake-up at ``now`` applies: forwarded rows dated up to ``now`` and the merges at or
    before ``now`` (each merge-in with its pieces); entries of cancelled links are dropped, the
    rest waits (nothing due at ``now`` waits, so no wake-up is set in the past)."""
    forwarded, waiting, dropped = [], [], 0
    merges: dict[LinkKey, list] = {}
    for entry in entries:
        if entry.link in cancelled:
            dropped += 1
        elif entry.kind == FORWARD:
            due = [r for r in entry.rows if r[_TS] <= now]
            forwarded += due
            if len(due) < len(entry.rows):
                waiting.append(entry._replace(rows=tuple(r for r in entry.rows if r[_TS] > now)))
        elif entry.link[1] <= now:
            merges.setdefault(entry.link, []).append(entry)
        else:
            waiting.append(entry)
    ready = []
    for link, parts in merges.items():
        states = [p.state for p in parts if p.state is not None]
        if not states:
            # Pieces whose merge-in has not come (only on a runner whose watermark passed an
            # element in flight): never lost, their rows are the known user's events; a merge-in
            # coming later is late at K (merged at its clock).
            forwarded += [r for p in parts for r in p.rows]
            continue
        ready.append((link, states[0], [r for p in parts for r in p.rows]))
    ready.sort(key=lambda m: (m[0][1], m[0][0]))
    return Due(forwarded, ready, waiting, dropped)


def merge_of(engine: Engine, link: LinkKey, state: bytes, rows: Sequence[ProfileEvent]) -> Merge:
    """The :class:`core.identity.Merge` K applies for ``link``: A's state rebuilt at M - 1, no
    identify (it is K's own event)."""
    return Merge(link[1], link[0], rebuild_anonymous(engine, state, rows, link[1]), None)
