"""Identity stitching with computed traits: after a merge the known user's computed traits cover
the anonymous profile's events too (core.computed.ComputedRuntime.merge), in ``stream`` and
``replay`` alike (``stream --streaming`` too: the incremental stages), compared with the stitched brute-force reference (tests/reference_identity.py)
on the stitching tests' data."""
import json

import pytest

from tests.commands import write_job
from tests.reference_identity import reference_stitched_outputs
from tests.test_acceptance_random import read_eventhub, run_pipeline
from tests.test_identity_pipelines import lines_for
from tests.test_identity_random import AUDIENCES

COMPUTED = {"spend_1h": {"op": "sum", "event": "purchase", "property": "price", "within": "1h"},
            "views": {"op": "count", "event": "view"},
            "max_price_30m": {"op": "max", "event": "purchase", "property": "price",
                              "within": "30m"}}
CONFIG = {"account": {"name": "acme"}, "identity": {"stitch": True}, "computed_traits": COMPUTED,
          "audiences": AUDIENCES + [
              {"id": "a8", "slug": "spent_100_1h",
               "condition": {"computed": "spend_1h", "op": "gte", "value": 100}},
              {"id": "a9", "slug": "viewed_3_big_30m",
               "condition": {"and": [{"computed": "views", "op": "gte", "value": 3},
                                     {"computed": "max_price_30m", "op": "gte", "value": 50}]}}],
          "works": [{"id": "hub", "workflow": "eventhub_audience_export",
                     "config": {"computed_fields": ["spend_1h", "views", "max_price_30m"]}}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("stitch-computed")
    lines = lines_for(7)
    cfg_path, in_path = write_job(str(base / "in"), CONFIG, lines)
    return base, lines, cfg_path, in_path


@pytest.mark.parametrize("kind", ["stream", "replay", "stream --streaming"])
def test_merged_computed_traits_match_the_stitched_reference(data, kind):
    base, lines, cfg_path, in_path = data
    out = str(base / ("out-" + kind.replace(" ", "")))
    run_pipeline(kind.split()[0], cfg_path, in_path, out, *kind.split()[1:])
    expected = reference_stitched_outputs(CONFIG, lines)["eventhub"]["hub"]
    slugs = {s["slug"] for m in expected for s in m["data"]["segment_events"]}
    assert {"spent_100_1h", "viewed_3_big_30m"} <= slugs, "the data must move both audiences"
    assert any("merged_into" in m["data"] for m in expected)
    got = read_eventhub(out, "hub")
    assert sorted(json.dumps(m, sort_keys=True) for m in got) == \
        sorted(json.dumps(m, sort_keys=True) for m in expected)
