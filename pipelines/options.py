"""Command-line options of the pipelines, as Beam ``PipelineOptions`` subclasses.

Every standard Beam option (``--runner``, ``--streaming``, ``--flink_master``, ...) is accepted too.
"""
from apache_beam.options.pipeline_options import PipelineOptions

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
#: Options every run needs; checked by the launcher (see ActivationOptions for why not argparse).
REQUIRED_OPTIONS = ("config", "input")


def flag_value(text):
    """A boolean flag's value: ``--verbose`` alone, or ``--verbose=true|false`` (Flex Templates
    pass every parameter with a value)."""
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false, got %r" % text)


def worker_processes_value(text):
    """``--worker_processes``: ``auto`` or a count of 0 or more."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        count = int(text)
    except (TypeError, ValueError):
        raise ValueError("expected auto or a number of processes, got %r" % text) from None
    if count < 0:
        raise ValueError("expected auto or a number of processes (0 or more), got %r" % text)
    return count


class ActivationOptions(PipelineOptions):
    """Options shared by ``pipelines.stream`` and ``pipelines.replay``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Not required=True: Beam parses every registered options class for every pipeline in the
        # process, so a required flag here would break unrelated pipelines; the launcher checks.
        parser.add_argument(
            "--config",
            help="Job config, YAML or JSON: account, audiences and works (see README). ${VAR} is "
                 "replaced by that environment variable; validation runs before any data moves.")
        parser.add_argument(
            "--input",
            help="Input records: a file or glob of JSON Lines files (replay also reads .parquet).")
        parser.add_argument(
            "--output_dir", default="out",
            help="Where local sinks, dead letters, the system-event log and summary.json go.")
        parser.add_argument(
            "--verbose", nargs="?", const=True, default=False, type=flag_value,
            help="Show tracebacks and INFO logs (secrets stay masked). Also --verbose=true|false.")
        parser.add_argument(
            "--progress_seconds", type=float, default=5.0,
            help="How often a local run prints progress to stderr (0 turns it off).")
        parser.add_argument(
            "--worker_processes", type=worker_processes_value, default="auto",
            help="Worker processes that parse input files (a file of more than one 4 MiB block is "
                 "split between them), build local Event Hub sink lines and, in replay, evaluate "
                 "users' histories next to the pipeline; the output is the same. 'auto' (default): "
                 "one per CPU on runners that run the "
                 "pipeline in this process (DirectRunner), 0 elsewhere (Flink and Dataflow already "
                 "run a worker per core); 0: all in the pipeline's process.")
        parser.add_argument(
            "--flush_seconds", type=float, default=None,
            help="Live (unbounded) input only: a local sink writes a part once the watermark is "
                 "this many seconds past the part's earliest record (default 10).")
        parser.add_argument(
            "--blob_grace_seconds", type=float, default=None,
            help="Live (unbounded) input only: a Blob export window is written once the watermark "
                 "is this many seconds past its end, so rows held back by the audience engine "
                 "still land in it (default 300); rows arriving later are dead-lettered.")


class ReplayOptions(PipelineOptions):
    """Options of ``pipelines.replay`` only."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--start", default=None,
            help="Replay only records with ts >= START (RFC 3339 or epoch seconds).")
        parser.add_argument(
            "--end", default=None,
            help="Replay only records with ts < END (RFC 3339 or epoch seconds).")
