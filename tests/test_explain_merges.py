"""``pipelines.explain`` with identity stitching follows merges (docs/COMMANDS.md): for a known
user, each merge point names the anonymous id that merged in, its events, what it held and every
audience's result there, and the user's transitions are the engine's over the merged history; for
an anonymous id, its exit at the merge names the user. Exact output on a small input, and the
transitions against tests/reference_identity.py on random histories."""
import json
import random

import pytest

from pipelines import explain
from tests.commands import write_job
from tests.reference_identity import reference_stitched_transitions
from tests.test_identity_random import AUDIENCES, random_lines
from cdp_activation.core.timeutil import parse_time

CONFIG = {
    "account": {"name": "acme"},
    "identity": {"stitch": True},
    "computed_traits": {"spend": {"op": "sum", "event": "purchase", "property": "price"}},
    "audiences": [
        {"id": "a1", "slug": "buyers2", "condition": {"event": "purchase", "within": "30m",
                                                       "min_count": 2}},
        {"id": "a2", "slug": "viewer", "condition": {"event": "view"}},
        {"id": "a3", "slug": "gold", "condition": {"trait": "tier", "op": "eq", "value": "gold"}},
    ],
    "works": [],
}
LINES = [
    {"event_id": "e1", "anonymous_id": "a1", "event": "purchase", "ts": "2026-11-20T10:00:00Z",
     "properties": {"price": 20}, "traits": {"city": "Paris", "tier": "silver"}},
    {"event_id": "e2", "anonymous_id": "a1", "event": "view", "ts": "2026-11-20T10:05:00Z"},
    {"event_id": "e3", "user_id": "k1", "event": "purchase", "ts": "2026-11-20T10:10:00Z",
     "properties": {"price": 50}},
    {"event_id": "e4", "user_id": "k1", "anonymous_id": "a1", "event": "identify",
     "ts": "2026-11-20T10:20:00Z", "traits": {"tier": "gold"}},
    {"event_id": "e5", "anonymous_id": "a1", "event": "purchase", "ts": "2026-11-20T10:25:00Z",
     "properties": {"price": 5}},
    {"event_id": "e6", "user_id": "k2", "anonymous_id": "a1", "event": "identify",
     "ts": "2026-11-20T11:00:00Z"},
]

KNOWN = """\
2026-11-20T10:10:00Z  event purchase       properties={"price": 50}
2026-11-20T10:20:00Z  MERGE anonymous_id a1 (identify e4): 2 event(s) of it before the merge count from here
      2026-11-20T10:00:00Z  event purchase       properties={"price": 20} traits={"city": "Paris", "tier": "silver"}
      2026-11-20T10:05:00Z  event view          
      it was a member of: viewer (since 2026-11-20T10:05:00Z)
      its traits: {"city": "Paris", "tier": "silver"}
      its computed: spend=20
      at the merge point: buyers2=true, viewer=true, gold=true
2026-11-20T10:20:00Z  event identify       anonymous_id=a1 traits={"tier": "gold"}
2026-11-20T10:20:00Z  ENTER buyers2
      * true  purchase in the last 30m: 2, needs >= 2
      computed: spend=70
2026-11-20T10:20:00Z  ENTER viewer
      * true  view ever: 1, needs >= 1
      computed: spend=70
2026-11-20T10:20:00Z  ENTER gold
      * true  trait tier eq "gold" (is "gold")
      computed: spend=70
2026-11-20T10:25:00Z  event purchase       anonymous_id=a1 properties={"price": 5}
2026-11-20T10:40:00Z  EXIT  buyers2
      * false purchase in the last 30m: 1, needs >= 2
      computed: spend=75
(* = changed at this moment: the cause of the transition)
"""

ANONYMOUS = """\
2026-11-20T10:00:00Z  event purchase       properties={"price": 20} traits={"city": "Paris", "tier": "silver"}
2026-11-20T10:05:00Z  event view          
2026-11-20T10:05:00Z  ENTER viewer
      * true  view ever: 1, needs >= 1
      computed: spend=20
2026-11-20T10:20:00Z  MERGED into user_id k1 (identify e4)
      its 1 later event(s) are k1's: explain them with --user k1
2026-11-20T10:20:00Z  EXIT  viewer
      member since 2026-11-20T10:05:00Z
      merged into user_id k1: every membership ends here
(* = changed at this moment: the cause of the transition)
"""


def _explain(capsys, cfg, path, key, anonymous=False):
    argv = ["--config", cfg, "--input", path, "--user", key] + (["--anonymous"] if anonymous
                                                                  else [])
    status = explain.run(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def small(tmp_path):
    return write_job(str(tmp_path), CONFIG, LINES)


def test_a_known_user_shows_each_merge_and_its_contribution(small, capsys):
    status, out, err = _explain(capsys, *small, "k1")
    assert (status, err) == (0, "")
    assert out == KNOWN


def test_an_anonymous_id_shows_its_exit_at_the_merge(small, capsys):
    status, out, err = _explain(capsys, *small, "a1", anonymous=True)
    assert (status, err) == (0, "")
    assert out == ANONYMOUS


def test_a_losing_claim_brings_no_merge(small, capsys):
    status, out, _ = _explain(capsys, *small, "k2")
    assert status == 0 and "MERGE" not in out and "ENTER" not in out
    assert out.startswith("2026-11-20T11:00:00Z  event identify       anonymous_id=a1\n")


def _transitions(out):
    """``[(T, slug, kind, merged_into or None)]`` from explain's output."""
    got, lines = [], out.splitlines()
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("ENTER", "EXIT"):
            merged = None
            if i + 2 < len(lines) and lines[i + 2].strip().startswith("merged into user_id "):
                merged = lines[i + 2].split()[3].rstrip(":")
            got.append((parse_time(parts[0]), parts[2], parts[1].lower(), merged))
    return sorted(got)


@pytest.mark.parametrize("seed", range(40))
def test_transitions_match_the_reference_on_random_histories(tmp_path, capsys, seed):
    lines = random_lines(random.Random(seed))
    config = {"account": {"name": "acme"}, "identity": {"stitch": True}, "audiences": AUDIENCES,
              "works": []}
    cfg, path = write_job(str(tmp_path), config, lines)
    expected = reference_stitched_transitions(config, lines)
    records = [json.loads(x) for x in lines]
    keys = {("user_id", r["user_id"]) for r in records if r.get("user_id")}
    keys |= {("anonymous_id", r["anonymous_id"]) for r in records if not r.get("user_id")}
    merges = 0
    for field, key in sorted(keys):
        status, out, err = _explain(capsys, cfg, path, key, field == "anonymous_id")
        assert status == 0, err
        want = sorted((T, slug, kind, merged) for T, changes, merged in expected.get((field, key), [])
                      for slug, kind, _enter in changes)
        assert _transitions(out) == want, (field, key)
        merges += out.count("  MERGE anonymous_id ")
    assert merges == len({r["anonymous_id"] for r in records
                          if r.get("user_id") and r.get("anonymous_id")})
