"""The benchmark still runs end to end, and stream and replay agree on its data (no timing asserted)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_runs_on_a_tiny_data_set_and_stream_equals_replay(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--events", "400", "--users", "20", "--days", "10",
         "--skip-1m", "--eventhubs-events", "300", "--repeat", "1", "--branches", "1",
         "--out", str(out),
         "--data", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=850)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["stream_equals_replay"] is True
    for kind in ("baseline", "stream", "replay"):
        figures = results["paths"][kind]
        assert figures["marginal_events_per_second"] > 0 and figures["peak_rss_mb_4N"] > 0
        assert [len(figures["runs_seconds"][size]) for size in ("tiny", "N", "4N")] == [1, 1, 1]
        assert figures["seconds_4N"] == figures["runs_seconds"]["4N"][0] == figures["median"]["seconds_4N"]
        assert figures["runs_cpu_seconds"]["4N"][0] > 0 and "cpu_linearity" in figures
        parts = figures["cpu_us_per_event"]
        assert abs(sum(v for k, v in parts.items() if k != "total") - parts["total"]) < 0.1
    assert results["replay_target_cpu_us_per_event"] > 0
    # The whole job wrote every branch's outputs, and each branch was also timed alone.
    outputs = os.listdir(tmp_path / "data" / "out-replay-N")
    assert {"eventhub", "blob"} <= set(outputs)
    assert results["output_files_N"] > 2
    assert set(results["branches"]) == {"audiences", "blob", "alerts"}
    for kinds in results["branches"].values():
        assert kinds["replay"]["marginal_events_per_second"] > 0
        assert kinds["stream"]["marginal_events_per_second"] > 0
    assert results["paths"]["core"]["state_bytes_median"] > 0
    # The profile attributes time to the project's components, not only to "other".
    for kind in ("replay", "stream"):
        shares = results["profile_N"][kind]
        assert shares.get("engine", 0) > 0 and shares.get("parse", 0) > 0
        assert abs(sum(shares.values()) - 1) < 0.01
    assert results["eventhubs_catchup"]["events"] == 300
    assert results["eventhubs_catchup"]["pipeline_events_per_second"] > 0
    # The messages compared are not empty: the check above compared something.
    messages = (tmp_path / "data" / "out-replay-N" / "eventhub" / "w-eh.jsonl").read_text().splitlines()
    assert messages
    assert "| replay |" in result.stdout and "stream == replay: True" in result.stdout
    assert "marginal CPU per event" in result.stdout
    # Every target is listed, each met, missed (with why) or not measured.
    assert "| replay speed | >= 10x the baseline (DirectRunner) |" in result.stdout
    assert "| 1M events | peak RSS <= 2048 MB | not measured (--skip-1m) | not measured |" in result.stdout


def test_figures_use_each_size_s_fastest_run_and_keep_the_medians():
    from bench.run import summarise
    walls = {"tiny": [2.0, 3.0, 2.5], "N": [5.0, 4.0, 4.5], "4N": [10.0, 13.0, 11.0]}
    figures = summarise(walls, 150000)
    assert (figures["startup_seconds"], figures["seconds_N"], figures["seconds_4N"]) == (2.0, 4.0, 10.0)
    assert figures["marginal_events_per_second"] == 75000  # 450k events in 6 s
    assert figures["linearity"] == 4.0  # (10 - 2) / (4 - 2)
    median = figures["median"]
    assert (median["startup_seconds"], median["seconds_N"], median["seconds_4N"]) == (2.5, 4.5, 11.0)
    assert median["marginal_events_per_second"] == 69231 and median["linearity"] == 4.25
    assert figures["runs_seconds"] == walls
    assert "cpu_linearity" not in figures  # no CPU times given


def test_cpu_linearity_is_taken_off_start_up_like_the_wall_figure():
    from bench.run import summarise
    walls = {"tiny": [2.0], "N": [4.0], "4N": [10.0]}
    cpus = {"tiny": [2.5, 2.0], "N": [5.0, 5.5], "4N": [14.0, 15.5]}
    figures = summarise(walls, 150000, cpus)
    assert figures["cpu_linearity"] == 4.0  # (14 - 2) / (5 - 2)
    assert figures["median"]["cpu_linearity"] == 4.17  # (14.75 - 2.25) / (5.25 - 2.25)
    assert figures["runs_cpu_seconds"] == cpus


def test_cpu_per_event_splits_the_least_cpu_run_of_each_size_into_parts_that_add_up():
    from bench.run import cpu_per_event

    def run(total, own):
        return {"cpu_seconds": total, "self_cpu_seconds": own}

    runs = {"N": [run(6.0, 3.0), run(5.0, 2.8)], "4N": [run(14.0, 5.2), run(15.0, 4.0)]}
    per_event = cpu_per_event(runs, 100000)
    # N takes its 5.0 s run, 4N its 14.0 s run; microseconds = seconds / 300k events * 1e6.
    assert per_event == {"pipeline's process": 8.0, "child processes": 22.0, "total": 30.0}
    # A run that reports no child's time (the baseline's measure) is all the pipeline's process.
    alone = {"N": [{"cpu_seconds": 3.0}], "4N": [{"cpu_seconds": 9.0}]}
    assert cpu_per_event(alone, 100000) == {"pipeline's process": 20.0, "child processes": 0.0,
                                             "total": 20.0}


def _burn(seconds):
    """A child's code: ``seconds`` of CPU, then a pause so that a sample sees its total."""
    return ("import time\nt = time.process_time()\nwhile time.process_time() - t < %s:\n    pass\n"
            "time.sleep(0.4)\n" % seconds)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads Linux /proc")
def test_tree_sampler_counts_sdk_worker_processes_and_the_cpu_of_each_role():
    from bench._tree import TreeSampler
    sampler = TreeSampler(every=0.05).start()
    # Two processes named like the SDK workers Beam's worker pool starts, and one like the job
    # server's JVM (argv[0] "java"); none of them waited for by this process's resource usage.
    workers = [subprocess.Popen([sys.executable, "-c", _burn(0.3) + "# SdkHarness(worker)"])
               for _ in range(2)]
    jvm = subprocess.Popen(["bash", "-c", "exec -a java %s -c '%s'" % (sys.executable, _burn(0.2))])
    for proc in workers + [jvm]:
        assert proc.wait(30) == 0
    figures = sampler.stop().summary()
    assert figures["sdk_workers_started"] == 2 and figures["sdk_workers_at_once"] == 2
    assert len(figures["sdk_worker_cpu_seconds"]) == 2
    assert min(figures["sdk_worker_cpu_seconds"]) >= 0.25
    roles = figures["tree_cpu_by_role"]
    assert roles["sdk_workers"] >= 0.5 and roles["job_server"] >= 0.15 and "launcher" in roles
    assert figures["tree_cpu_seconds"] >= roles["sdk_workers"] + roles["job_server"]
    assert figures["tree_peak_rss_mb"] > 0


def test_flink_runs_take_the_runner_options_last_on_every_path():
    from bench.run import _pipeline_args, flink_args
    for kind in ("baseline", "stream", "replay"):
        module, argv = _pipeline_args(kind, "in.jsonl", "out", runner_args=flink_args(2))
        assert argv[-2:] == ["--runner=FlinkRunner", "--parallelism=2"]
    assert _pipeline_args("replay", "in.jsonl", "out")[1][-2:] == ["--progress_seconds", "0"]


def test_the_baseline_on_flink_gets_the_pipeline_commands_runner_set_up(tmp_path, monkeypatch):
    # The same job server lookup as pipelines.stream/replay: no jar under the tools directory is
    # the one-line install hint, before any pipeline (and no download) starts.
    from bench import baseline
    from pipelines.runners import RunnerMissingError
    monkeypatch.setenv("CDP_TOOLS_DIR", str(tmp_path))
    (tmp_path / "in.jsonl").write_text('{"user_id": "u", "ts": "2024-01-01T00:00:00Z"}\n')
    with pytest.raises(RunnerMissingError, match="install_runners.sh flink"):
        baseline.run(["--input", str(tmp_path / "in.jsonl"), "--runner=FlinkRunner"])


def _tree_run(wall, tree_cpu, roles, workers):
    return {"wall_seconds": wall, "tree_cpu_seconds": tree_cpu, "tree_peak_rss_mb": 900.0,
            "tree_cpu_by_role": roles, "sdk_worker_cpu_seconds": workers,
            "sdk_workers_started": len(workers), "sdk_workers_at_once": len(workers)}


def _write_outputs(directory, files):
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_flink_figures_compare_with_both_baselines_scale_p1_to_p2_and_check_outputs(tmp_path):
    from bench.run import KINDS, SIZES, flink_out, flink_results, format_flink, format_table, summarise
    n = 30000
    walls = {1: {"baseline": (20.0, 30.0, 60.0), "stream": (20.0, 25.0, 40.0), "replay": (20.0, 24.0, 36.0)},
             2: {"baseline": (21.0, 26.0, 41.0), "stream": (21.0, 23.0, 29.0), "replay": (21.0, 22.0, 31.0)}}
    measured = {}
    for p, by_kind in walls.items():
        measured[p] = {}
        for kind, times in by_kind.items():
            measured[p][kind] = {size: [_tree_run(t, 2 * t, {"job_server": t, "sdk_workers": t},
                                                  [t * 0.9, t * 0.1][:p])]
                                 for size, t in zip(SIZES, times)}
    direct = summarise({"tiny": [2.0], "N": [5.0], "4N": [14.0]}, n)  # 10,000 ev/s
    eventhub = {"eventhub/w-eh.jsonl": b'{"a": 1}\n'}
    for kind in ("stream", "replay"):
        for size in ("N", "4N"):
            _write_outputs(tmp_path / ("out-%s-%s" % (kind, size)), eventhub)
            for p in (1, 2):
                other = eventhub if (kind, p, size) != ("replay", 2, "4N") else {"eventhub/w-eh.jsonl": b"{}\n"}
                _write_outputs(tmp_path / os.path.basename(flink_out(str(tmp_path), kind, size, p)), other)
    flink = flink_results(measured, n, direct, str(tmp_path))

    stream1, stream2 = flink["paths"]["stream"]["p1"], flink["paths"]["stream"]["p2"]
    assert stream1["marginal_events_per_second"] == 6000 and stream2["marginal_events_per_second"] == 15000
    assert stream1["ratio_to_direct_baseline"] == 0.6 and stream2["ratio_to_direct_baseline"] == 1.5
    assert stream1["ratio_to_flink_baseline"] == 2.0 and stream2["ratio_to_flink_baseline"] == 2.5
    assert flink["paths"]["baseline"]["p2"]["ratio_to_flink_baseline"] == 1.0
    assert flink["scaling"]["ratio"] == {"baseline": 2.0, "stream": 2.5, "replay": 1.33}
    assert stream2["startup_seconds"] == 21.0 and stream2["peak_rss_mb_4N"] == 900.0
    assert stream2["sdk_workers_started"] == 2 and stream1["sdk_workers_started"] == 1
    # Tree CPU by role, marginal: (29 - 23) s of the JVM over 90k events.
    assert stream2["cpu_us_per_event_by_role"] == {"job_server": 66.67, "sdk_workers": 66.67, "total": 133.33}
    assert stream2["sdk_worker_cpu_seconds_4N"] == pytest.approx([26.1, 2.9])
    assert flink["equal_to_direct"] == {"stream": {"p1": True, "p2": True}, "replay": {"p1": True, "p2": False}}
    assert flink["differing_files"]["replay"]["p2"] == ["4N: eventhub/w-eh.jsonl"]

    # The printed table: a row per (path, runner and parallelism), then the Flink lines.
    figures = summarise({"tiny": [2.0], "N": [5.0], "4N": [14.0]}, n, {"tiny": [2.0], "N": [5.0], "4N": [14.0]})
    figures.update(peak_rss_mb_4N=300.0, cpu_us_per_event={"total": 100.0})
    paths = {kind: dict(figures, ratio_to_baseline=1.0) for kind in KINDS}
    paths["core"] = {"engine_events_per_second": 100000, "ratio_to_baseline": 10.0, "peak_rss_mb_4N": 200,
                     "parse_events_per_second": 50000, "state_bytes_median": 200, "state_bytes_max": 300}
    table = format_table({"paths": paths, "repeats": 1, "flink": flink, "stream_equals_replay": True,
                          "machine": {"platform": "Linux", "python": "3.11", "cpus": 2}})
    assert "| stream | flink p2 | 15000 | 1.5 | 2.5 | 21.0 | 23.0 | 29.0 |" in table
    assert "| replay | flink p2 | 10000 | 1.0 | 1.67 |" in table and "**differ**" in table
    assert "| stream | direct | 10000 | 1.0 | 1.0 |" in table
    assert "| stream | 6000 | 15000 | 2.5x, 2.5x |" in table
    assert "p1 yes, p2 **no**" in table
    assert "Flink p2 replay wrote other outputs than the DirectRunner: 4N: eventhub/w-eh.jsonl" in table
    assert "\n".join(format_flink(flink)) in table


def test_flink_tasks_gives_each_subtask_s_running_time_longest_task_first():
    from bench.flink_tasks import format_tasks, subtask_times

    def line(task, sub, old, new):
        return ("INFO apache_beam.utils.subprocess_server: [flink-pekko.actor.default-dispatcher-5] INFO "
                "org.apache.flink.runtime.executiongraph.ExecutionGraph - %s (%d/2) (8f59_0c5b_%d_0) "
                "switched from %s to %s." % (task, sub, sub, old, new))
    parse = "MapPartition (MapPartition at [7]{ReadRecords, EvaluateAudiences})"
    group = "GroupReduce (GroupReduce at EvaluateAudiences/GroupByUser)"
    stamped = [(100.0, line(parse, 1, "INITIALIZING", "RUNNING")), (100.5, line(parse, 2, "INITIALIZING", "RUNNING")),
               (101.0, "an unrelated line (1/2) switched from A to B."),
               (101.0, line(parse, 1, "RUNNING", "FINISHED")), (113.0, line(parse, 2, "RUNNING", "FINISHED")),
               (113.0, line(group, 1, "INITIALIZING", "RUNNING")), (113.0, line(group, 2, "INITIALIZING", "RUNNING")),
               (120.0, line(group, 1, "RUNNING", "FINISHED")), (120.0, line(group, 2, "RUNNING", "FINISHED"))]
    tasks = subtask_times(stamped)
    assert tasks == {parse: {1: (0.0, 1.0), 2: (0.5, 12.5)}, group: {1: (13.0, 7.0), 2: (13.0, 7.0)}}
    assert format_tasks(tasks, 1) == ["sub 1: +0.0 s, 1.0 s  sub 2: +0.5 s, 12.5 s | " + parse]
