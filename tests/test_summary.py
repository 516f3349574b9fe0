"""The run summary (pipelines/summary.py): each work's figures come from its workflow's counters,
and a runner without metrics is said to have none."""
import io

from cdp_activation.core.config import parse_config
from cdp_activation.core.workflows import WORKFLOWS
from pipelines.summary import build_summary, print_summary

CONFIG = {"account": {"name": "acme"}, "audiences": [{"slug": "a", "condition": {"event": "x"}}],
          "works": [{"id": "w-eh", "workflow": "eventhub_audience_export"},
                    {"id": "w-blob", "workflow": "azure_blob_event_export",
                     "config": {"container": "exports"}, "label": "daily files"},
                    {"id": "w-hook", "workflow": "webhook_system_events", "paused": True}]}


def test_each_works_figures_are_its_workflows_counters():
    job = parse_config(CONFIG)
    totals = {("work:w-eh", "messages_delivered"): 7, ("work:w-blob", "rows_delivered"): 3,
              ("work:w-hook", "failures"): 1, ("audience:a", "enters"): 2,
              ("input", "records_read"): 9}
    summary = build_summary(job, totals, "out", "replay", 1.25)
    assert summary["works"] == {
        "w-eh": {"workflow": "eventhub_audience_export", "messages": 7, "batches": 0,
                 "deadlettered": 0, "failures": 0},
        "w-blob": {"workflow": "azure_blob_event_export", "label": "daily files", "files": 0,
                   "rows": 3, "skipped_before_marker": 0, "deadlettered": 0, "failures": 0},
        "w-hook": {"workflow": "webhook_system_events", "paused": True, "alerts": 0,
                   "deadlettered": 0, "failures": 1}}
    for work in job.works:
        names = WORKFLOWS[work.workflow].summary_counters
        assert [k for k in summary["works"][work.id] if k not in ("workflow", "label", "paused")] == [
            n.replace("_delivered", "") for n in names] + ["deadlettered", "failures"]
    assert summary["audiences"] == {"a": {"enters": 2, "exits": 0}}
    assert "metrics" not in summary
    stream = io.StringIO()
    print_summary(summary, stream)
    assert "    w-blob               azure_blob_event_export    files 0, rows 3" in stream.getvalue()


def test_a_runner_without_metrics_is_said_to_have_none():
    summary = build_summary(parse_config(CONFIG), None, "out", "stream", 0.5)
    assert summary["metrics"] == "unavailable from this runner"
    assert summary["records_read"] == 0


def test_stitching_adds_every_identity_counter():
    """With ``identity: {stitch: true}`` the summary has each ``identity`` counter, the incremental
    stages' own (cancelled links and entries, late claims) included, and none without it."""
    totals = {("identity", "merges"): 4, ("identity", "conflicting_claims"): 1,
              ("identity", "forwarded_events"): 6, ("identity", "cancelled_links"): 2,
              ("identity", "cancelled_entries"): 3, ("identity", "late_claims"): 5}
    summary = build_summary(parse_config(dict(CONFIG, identity={"stitch": True})), totals, "out",
                            "stream", 1.0)
    assert summary["identity"] == {"merges": 4, "conflicting_claims": 1, "forwarded_events": 6,
                                   "cancelled_links": 2, "cancelled_entries": 3, "late_claims": 5}
    assert "identity" not in build_summary(parse_config(CONFIG), totals, "out", "stream", 1.0)
