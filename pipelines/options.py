"""Command-line options of the pipelines, as Beam ``PipelineOptions`` subclasses.

Every standard Beam option (``--runner``, ``--streaming``, ``--flink_master``, ...) is accepted too.
"""
from apache_beam.options.pipeline_options import PipelineOptions


class ActivationOptions(PipelineOptions):
    """Options shared by ``pipelines.stream`` and ``pipelines.replay``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--config", required=True,
            help="Job config, YAML or JSON: account, audiences and works (see README). ${VAR} is "
                 "replaced by that environment variable; validation runs before any data moves.")
        parser.add_argument(
            "--input", required=True,
            help="Input records: a file or glob of JSON Lines files (replay also reads .parquet).")
        parser.add_argument(
            "--output_dir", default="out",
            help="Where local sinks, dead letters, the system-event log and summary.json go.")
        parser.add_argument(
            "--verbose", action="store_true", default=False,
            help="Show tracebacks and INFO logs (secrets stay masked).")
        parser.add_argument(
            "--progress_seconds", type=float, default=5.0,
            help="How often a local run prints progress to stderr (0 turns it off).")


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
