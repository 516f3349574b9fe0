"""Launching ``pipelines.stream`` and ``pipelines.replay``: options, checks before any data moves
(config, destinations, input, runner, ``--state``, output directory, each work's credentials),
running the graph (``pipelines/wiring.py``), the summary (``pipelines/summary.py``), and the exit
status: 0 done, 1 a work failed or the run broke, 2 a problem the user must fix (one line), 130
interrupted (Ctrl-C; ``core/interrupt.py``).
"""
import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from typing import Callable, Iterator, List, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import AzureOptions, PipelineOptions, StandardOptions

from cdp_activation.core.config import ConfigError, JobConfig, check_destinations, load_config
from cdp_activation.core.redact import Redactor, collect_secrets, install_log_redaction
from cdp_activation.core.snapshot import SnapshotError
from cdp_activation.core.timeutil import TimeFormatError, format_time
from pipelines.cli import UsageError, check_pipeline_arguments, pipeline_help, wants_help
from pipelines.options import COMMAND_OPTIONS, REQUIRED_OPTIONS, ActivationOptions, flag_value
from pipelines.runners import (DIRECT_RUNNERS, RunnerMissingError, beam_version, choose_runner,
                               is_flink, is_prism, kafka_expansion_service, runner_environment,
                               runner_name)
from pipelines.summary import (build_summary, counter_totals, failed_work_events, print_summary,
                               summary_as_of, write_report, write_summary)
from pipelines.wiring import RunState, build_graph, option_value
from pipelines.workflows import preflight
from cdp_activation.transforms import outputs
from cdp_activation.transforms.audiences import EngineSpec
from cdp_activation.core.interrupt import deferred, exit_process
from cdp_activation.transforms.read import InputMissingError, check_input_exists
from cdp_activation.transforms.state import commit_snapshot, load_snapshot, temporary_uri


class LaunchError(RuntimeError):
    """A problem the user must fix; printed as one line."""


# -- set-up ------------------------------------------------------------------------------------

def _configure_logging(verbose, redactor):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    if not verbose:
        # Beam and the Azure SDKs are chatty at INFO; a local run prints its own summary.
        for noisy in ("apache_beam", "azure", "uamqp", "root"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # Beam sets the logger of Prism's output to INFO when it starts Prism, which would print
        # every line Prism logs; its warnings and errors still show.
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    install_log_redaction(redactor)


def _prepare_output_dir(output_dir):
    """Creates ``--output_dir`` (a local path or a Beam file system URI) and checks that it can
    be written, before any data moves; a problem is one line (:class:`LaunchError`)."""
    probe = outputs.join(output_dir, "%scheck-%s" % (outputs.TEMPORARY_PREFIX, uuid.uuid4().hex[:12]))
    try:
        outputs.make_directory(output_dir)
        outputs.write_file(probe, (b"",))
        outputs.delete_file(probe)
    except Exception as exc:  # pylint: disable=broad-except
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LaunchError("--output_dir %s: cannot write there: %s: %s"
                          % (output_dir, type(exc).__name__, first[:300])) from None



LIVE_SCHEMES = ("eventhubs://", "kafka://", "pubsub://")


def _live_source(uri, options, redactor):
    """The source of a live ``--input`` URI (None for files); see transforms/live_sources.py."""
    if not uri.startswith(LIVE_SCHEMES):
        return None
    from cdp_activation.clients.eventhubs_consumer import EventHubsSourceError
    from cdp_activation.transforms.live_sources import build_live_source
    try:
        source = build_live_source(uri, os.environ)
    except EventHubsSourceError as exc:
        raise LaunchError(str(exc)) from None
    redactor.add(source.secrets)
    if source.eventhubs is not None:
        try:  # wrong credentials fail here, in a second, not after the SDK's retries inside Beam
            source.eventhubs.verify()
        except EventHubsSourceError as exc:
            raise LaunchError(str(exc)) from None
    if not source.bounded and not options.view_as(StandardOptions).streaming:
        raise LaunchError("input %s: a live read never ends: add --streaming (or mode=catchup "
                          "for a bounded catch-up run)" % uri.split("?", 1)[0])
    return source


def _kafka_source(uri, options, source):
    """A ``kafka://`` source whose ReadFromKafka is expanded where this run's runner can run it
    (``pipelines.runners.kafka_expansion_service``); ``source`` itself when Beam's default is."""
    from cdp_activation.transforms.live_sources import build_live_source
    try:
        service = kafka_expansion_service(options)
    except RunnerMissingError as exc:
        raise LaunchError(str(exc)) from None
    return source if service is None else build_live_source(uri, os.environ, service)


def _choose_runner(options, live_source):
    """The run's runner: Prism for a live input unless ``--runner`` names another
    (pipelines/runners.py); a live read on a runner that cannot follow it is refused or warned of."""
    live = live_source is not None and not live_source.bounded
    named = options.view_as(StandardOptions).runner is not None
    try:
        runner = choose_runner(options, live)
    except RunnerMissingError as exc:
        raise LaunchError(str(exc)) from None
    if live and not named:
        sys.stderr.write("live input: running on %s (name another with --runner)\n" % runner)
    if not live and is_prism(runner) and options.view_as(StandardOptions).streaming:
        # Under --streaming Beam's Create (the file match, the as-of from the data, the Blob
        # export's first window) keeps an empty MaybeReshuffle, which Prism 2.62 refuses as an
        # unknown transform after it has started (apache/beam#34564).
        raise LaunchError("--streaming with a bounded input does not run on Prism %s "
                          "(apache/beam#34564): drop --streaming, or use --runner=DirectRunner "
                          "or FlinkRunner" % beam_version())
    if live:
        check_live_runner(options.view_as(StandardOptions).runner)


def check_live_runner(runner: str) -> None:
    """Refuses or warns about local runners that cannot run a live read faithfully.

    Beam's BundleBasedDirectRunner (measured with 2.77; docs/RUNNERS.md) fails
    on any splittable DoFn under --streaming; the DirectRunner, offline, falls back to the
    FnApiRunner, which reads the hub but ignores the source's watermark.
    """
    name = runner_name(runner)
    if name == "bundlebaseddirect":
        raise LaunchError("the BundleBasedDirectRunner cannot run a live read: it fails on "
                          "any splittable DoFn with --streaming; use the DirectRunner to try "
                          "the wiring, Flink or Dataflow to run it")
    if name in DIRECT_RUNNERS:
        sys.stderr.write(
            "warning: a live read on the DirectRunner only tries the wiring: offline it runs on "
            "Beam's FnApiRunner, which does not follow the source's watermark (event-time timers "
            "fire at once, so delayed exits, Blob window closes and the 24 h dedupe are not "
            "honoured, and steps after a timer may get data only when the input ends). Leave "
            "--runner out to run on Prism, or run live jobs on Flink or Dataflow.\n")


def _verbose_requested(argv):
    for arg in argv:
        if arg == "--verbose":
            return True
        if arg.startswith("--verbose="):
            try:
                return flag_value(arg.split("=", 1)[1])
            except ValueError:
                return False
    return False


def main(argv: Optional[List[str]], mode: str, make_evaluate: Callable,
         time_range_of: Optional[Callable] = None, help_text: Optional[tuple] = None) -> int:
    """Runs one pipeline command; returns the process exit status.

    ``make_evaluate(spec)`` gives the command's evaluate PTransform. ``help_text``:
    ``(usage, description, examples)`` for ``--help`` (pipelines/cli.py).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "pipelines." + mode
    if wants_help(argv):
        usage, description, examples = help_text or ("python -m %s [options]" % command, "", ())
        sys.stdout.write(pipeline_help(command, usage, description, COMMAND_OPTIONS, examples))
        return 0
    try:
        check_pipeline_arguments(argv, command, COMMAND_OPTIONS)
    except UsageError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return 2
    verbose = _verbose_requested(argv)
    redactor = Redactor()
    _configure_logging(verbose, redactor)
    try:
        with private_temp_directory():
            return _run(argv, mode, make_evaluate, redactor, time_range_of)
    except (ConfigError, InputMissingError, LaunchError, RunnerMissingError) as exc:
        sys.stderr.write("error: %s\n" % redactor(str(exc)))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:  # the last line of defence: one clear, redacted line
        if verbose:
            sys.stderr.write(redactor(traceback.format_exc()))
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        sys.stderr.write("error: %s: %s\n" % (type(exc).__name__, redactor(first)[:500]))
        return 1


@contextlib.contextmanager
def private_temp_directory() -> Iterator[str]:
    """Temporary files of the run in one folder of its own, removed when the run ends.

    Beam's local runners make temporary folders (staging, artifacts, a requirements cache) in
    the system's temporary directory and leave them there, empty, after every run; they are made
    here instead (``tempfile.tempdir``, and ``TMPDIR`` for processes the run starts), and go.

    The folder goes at the interpreter's exit, not when the block ends: Beam stops a job server
    it started (Flink's) from an exit handler, which first removes the server's folder inside
    this one and stops the server only if that worked; removed earlier, the server (a ``java``
    process with the embedded Flink and the job) would run on after the command. Registered
    before the run, this removal runs after Beam's handlers (exit handlers run last first).
    """
    previous_tempdir, previous_env = tempfile.tempdir, os.environ.get("TMPDIR")
    path = tempfile.mkdtemp(prefix="activation-run-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    try:
        yield path
    finally:
        tempfile.tempdir = previous_tempdir
        if previous_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_env


def exit_command(status: int) -> None:
    """Ends a pipeline command's process with ``status`` (``core.interrupt.exit_process``: a
    Ctrl-C until the very end still gets ``interrupted``)."""
    exit_process(status)


def _run_state(act, options, live_source, time_range, run_id, job):
    """The :class:`RunState` of a bounded run (None for an unbounded one), after checking
    ``--as_of`` and ``--state`` and loading the snapshot: all before any data moves."""
    as_of_text, uri = option_value(act, "as_of", None), option_value(act, "state", None)
    bounded = live_source is None or live_source.bounded
    if not bounded:
        for name, value in (("as_of", as_of_text), ("state", uri)):
            if value is not None:
                raise LaunchError("--%s applies to bounded runs (files, mode=catchup); a live run "
                                  "keeps its state in the runner" % name)
        return None
    as_of = None
    if as_of_text is not None:
        from pipelines.replay import parse_bound  # the same forms as --start/--end
        try:
            as_of = parse_bound(as_of_text)
        except TimeFormatError as exc:
            raise ConfigError("--as_of: %s" % exc) from None
    elif time_range is not None and time_range[1] is not None:
        # The run holds the records with ts < --end: its last instant is just before it, and a
        # point at --end itself belongs to the run that reads the events at --end.
        as_of = time_range[1] - 1
    if uri is None:
        return RunState(as_of)
    if options.view_as(StandardOptions).streaming:
        raise LaunchError("--state needs batch execution (the whole input read, then each user "
                          "evaluated once): drop --streaming")
    if options.view_as(StandardOptions).no_wait_until_finish:
        raise LaunchError("--state is written when the run has finished: drop "
                          "--no_wait_until_finish")
    try:
        snapshot = load_snapshot(uri)
    except SnapshotError as exc:
        raise LaunchError("--state %s: %s" % (uri, exc)) from None
    snapshot_as_of = None
    if snapshot is not None:
        if snapshot.account != job.account_name:
            raise LaunchError("--state %s: a snapshot of account %r, the config is account %r"
                              % (uri, snapshot.account, job.account_name))
        snapshot_as_of = snapshot.as_of
        if as_of is not None and snapshot_as_of is not None and as_of < snapshot_as_of:
            raise LaunchError("--state %s: the snapshot is as of %s, after this run's as-of %s"
                              % (uri, format_time(snapshot_as_of), format_time(as_of)))
    return RunState(as_of, uri, temporary_uri(uri, run_id), snapshot_as_of)


def _stitching(options, live_source, run_state) -> Callable:
    """The evaluate PTransform's maker with ``identity: {stitch: true}``: the incremental stages
    (``transforms.identity_stream``) when timers fire as the watermark moves (``--streaming``, an
    unbounded input), else the batch form (``transforms.identity``), which also keeps the links in
    ``--state`` (refused with ``--streaming`` and live inputs by ``_run_state``)."""
    if (live_source is not None and not live_source.bounded) or \
            options.view_as(StandardOptions).streaming:
        from cdp_activation.transforms.identity_stream import StitchAndEvaluateStream
        return StitchAndEvaluateStream
    from cdp_activation.transforms.identity import StitchAndEvaluate
    return StitchAndEvaluate


def check_stitching_runner(options: PipelineOptions, job: JobConfig,
                           run_state: Optional[RunState]) -> None:
    """Refuses identity stitching with ``--streaming`` over a bounded input on Flink when the
    as-of time comes from the data. Its incremental stages then read that time as a side input, and
    Beam's Flink runner failed 6 runs of 13 at the input's end (a timer's key reaches
    ``ExecutableStageDoFnOperator.setTimer`` as raw bytes); with ``--as_of`` given there is no side
    input, and 12 runs of 12 wrote replay's bytes (docs/RUNNERS.md)."""
    streaming = options.view_as(StandardOptions).streaming
    if (job.identity.stitch and streaming and run_state is not None and run_state.as_of is None
            and is_flink(options.view_as(StandardOptions).runner)):
        raise LaunchError("identity stitching with --streaming over a bounded input on Flink "
                          "needs --as_of T or --end T (Beam %s's Flink runner fails on the as-of "
                          "time read from the data): give one, or drop --streaming"
                          % beam_version())


def _run(argv, mode, make_evaluate, redactor, time_range_of):
    options = PipelineOptions(argv)
    act = options.view_as(ActivationOptions)
    for name in REQUIRED_OPTIONS:
        if not getattr(act, name):
            raise LaunchError("--%s is required (see --help)" % name)
    job = load_config(act.config)
    redactor.add(collect_secrets(job.raw))
    for warning in check_destinations(job):
        sys.stderr.write("warning: %s\n" % redactor(warning))
    # Beam's Azure file system options (an azfs:// --output_dir) hold a key too.
    for azure_connection_string in (option_value(options.view_as(AzureOptions),
                                            "azure_connection_string", ""),
                                    os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")):
        redactor.add(collect_secrets({"connection_string": azure_connection_string}))
    live_source = _live_source(act.input, options, redactor)
    if live_source is None:
        check_input_exists(act.input)
    _choose_runner(options, live_source)
    if live_source is not None and live_source.kind == "kafka":
        live_source = _kafka_source(act.input, options, live_source)
    time_range = time_range_of(options) if time_range_of else None
    outputs.use_options(options)  # before the snapshot is read: --state may be on azfs://
    run_id = uuid.uuid4().hex[:12]
    run_state = _run_state(act, options, live_source, time_range, run_id, job)
    check_stitching_runner(options, job, run_state)
    _prepare_output_dir(act.output_dir)
    disabled = preflight(job, act.output_dir)
    for work_id, reason in disabled.items():
        sys.stderr.write("work %s: %s\n" % (work_id, redactor(reason)))
    spec = EngineSpec.from_job(job, job.raw.get("audiences") or [])
    if run_state is not None:
        spec = spec.for_run(run_state.as_of, keep_state=run_state.uri is not None)
    if job.identity.stitch:
        make_evaluate = _stitching(options, live_source, run_state)
    started = time.time()
    with runner_environment(options):
        pipeline = beam.Pipeline(options=options)
        build_graph(pipeline, job, make_evaluate(spec), act, run_id, disabled, time_range,
                    live_source, run_state)
        result = pipeline.run()
        if options.view_as(StandardOptions).no_wait_until_finish:
            # A launcher (e.g. a Dataflow Flex Template) submits and returns; the job reports
            # through its runner's counters and its works' system events.
            sys.stdout.write("submitted: %s\n" % getattr(result, "state", "running"))
            return 0
        state = result.wait_until_finish()
    seconds = time.time() - started
    if run_state is not None and run_state.uri is not None:
        if str(state).upper().endswith("DONE") or state is None:
            commit_snapshot(run_state.temporary, run_state.uri)
    summary = build_summary(job, counter_totals(result), act.output_dir, mode, seconds)
    summary["as_of"] = summary_as_of(result, run_state)
    if run_state is not None and run_state.uri is not None:
        summary["state"] = run_state.uri
    write_summary(act.output_dir, summary)
    with deferred():  # a Ctrl-C while the report is written ends the command after it
        report = write_report(act.output_dir, summary)
    print_summary(summary)
    sys.stdout.write("  report: %s\n" % report)
    failures = failed_work_events(act.output_dir, job)
    if failures:
        seen = set()
        for work_id, notes in failures:
            if (work_id, notes) not in seen:
                seen.add((work_id, notes))
                sys.stderr.write("error: work %s failed: %s\n" % (work_id, redactor(notes)))
        return 1
    return 0
