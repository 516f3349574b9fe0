"""Command-line options of the pipelines, as Beam ``PipelineOptions`` subclasses.

Every standard Beam option (``--runner``, ``--streaming``, ``--flink_master``, ...) is accepted too.
"""
import argparse
from typing import Union

from apache_beam.options.pipeline_options import PipelineOptions

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
#: Options every run needs; checked by the launcher (see ActivationOptions for why not argparse).
REQUIRED_OPTIONS = ("config", "input")


class OptionValueError(argparse.ArgumentTypeError, ValueError):
    """A value an option does not take; argparse shows its message after the option's name."""


def flag_value(text: Union[str, bool]) -> bool:
    """A boolean flag's value: ``--verbose`` alone, or ``--verbose=true|false`` (Flex Templates
    pass every parameter with a value)."""
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise OptionValueError("expected true or false, got %r" % text)


class ActivationOptions(PipelineOptions):
    """Options shared by ``pipelines.stream`` and ``pipelines.replay``.

    Each help is one line with an example: ``--help`` prints it as it is (pipelines/cli.py);
    docs/COMMANDS.md has the longer story of each option.
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # Not required=True: Beam parses every registered options class for every pipeline in the
        # process, so a required flag here would break unrelated pipelines; the launcher checks.
        parser.add_argument(
            "--config", metavar="FILE",
            help="Required. Job config, YAML or JSON (account, audiences, works; ${VAR} is read "
                 "from the environment), e.g. --config examples/config.yaml")
        parser.add_argument(
            "--input", metavar="URI",
            help="Required. Input records: a JSON Lines file or glob (replay also .parquet), or a "
                 "live source URI, e.g. --input 'archive/2026-11-*.jsonl'")
        parser.add_argument(
            "--output_dir", default="out", metavar="DIR",
            help="Where local sinks, dead letters, summary.json and report.html go (default out): "
                 "a local path or a Beam file system URI (docs/OUTPUTS.md), e.g. --output_dir "
                 "/tmp/run1 or azfs://ACCOUNT/CONTAINER/PATH")
        parser.add_argument(
            "--verbose", nargs="?", const=True, default=False, type=flag_value, metavar="BOOL",
            help="Show tracebacks and INFO logs (secrets stay masked), e.g. --verbose or "
                 "--verbose=false")
        parser.add_argument(
            "--progress_seconds", type=float, default=5.0, metavar="S",
            help="How often a local run prints progress to stderr (default 5; 0: never), e.g. "
                 "--progress_seconds 1")
        parser.add_argument(
            "--as_of", default=None, metavar="T",
            help="Bounded runs: evaluate audiences up to T (RFC 3339 or epoch seconds; default "
                 "--end, else the latest received_at read); later wake-ups stay pending, e.g. "
                 "--as_of 2026-11-20T23:59:59.999999Z")
        parser.add_argument(
            "--state", default=None, metavar="URI",
            help="Bounded runs: state snapshot (Parquet) loaded at the start if present and "
                 "written at the end, so runs continue each other (docs/STATE.md), e.g. "
                 "--state gs://bucket/jobs/acme/audiences.parquet")
        parser.add_argument(
            "--flush_seconds", type=float, default=None, metavar="S",
            help="Live input only: a local sink writes a part this many seconds of watermark after "
                 "its first record (default 10), e.g. --flush_seconds 2")
        parser.add_argument(
            "--blob_grace_seconds", type=float, default=None, metavar="S",
            help="Live input only: a Blob window is written this many seconds of watermark after "
                 "its end (default 300), e.g. --blob_grace_seconds 60")


class ReplayOptions(PipelineOptions):
    """Options of ``pipelines.replay`` only."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--start", default=None, metavar="T",
            help="Replay only records with ts >= T: a date (UTC midnight), RFC 3339 or epoch "
                 "seconds, e.g. --start 2026-11-20")
        parser.add_argument(
            "--end", default=None, metavar="T",
            help="Replay only records with ts < T, as --start, e.g. --end 2026-11-21T06:00:00Z")


def _positive_millis(text: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise OptionValueError("expected milliseconds (a whole number), got %r" % text) from None
    if value < 1:
        raise OptionValueError("expected milliseconds above 0, got %r" % text)
    return value


class FlinkCheckpointOptions(PipelineOptions):
    """Flink's checkpoint and restore options, as Beam's Flink job server reads them
    (``FlinkPipelineOptions`` of the Java runner).

    Beam's Python SDK 2.62 declares none of them: its FlinkRunner learns them from the job server
    when it submits, which is after this project's launcher has refused unknown options. They are
    declared here so that the commands accept them and pass them on under Beam's names; each
    value goes to the job server as given, and Flink applies it (docs/RUNNERS.md, "Flink live").
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        for flag, kind, default, metavar, help_text in FLINK_CHECKPOINT_OPTIONS:
            if kind is bool:      # --flag alone, or --flag=true|false
                parser.add_argument(flag, nargs="?", const=True, default=default, type=flag_value,
                                    metavar="BOOL", help=help_text)
            elif isinstance(kind, tuple):     # one of these words
                parser.add_argument(flag, choices=kind, default=default, help=help_text)
            else:
                parser.add_argument(flag, type=kind, default=default, metavar=metavar,
                                    help=help_text)


#: Flink's checkpoint and restore options: ``(flag, type, default, metavar, help)``. The type is
#: ``bool`` for a boolean flag, a tuple of words for a choice, else a function of the text.
FLINK_CHECKPOINT_OPTIONS = (
    ("--checkpointing_interval", _positive_millis, None, "MS",
     "Flink streaming: take a checkpoint every MS milliseconds (default: none), e.g. "
     "--checkpointing_interval=2000"),
    ("--finish_bundle_before_checkpointing", bool, None, None,
     "Flink streaming: end each step's bundle before it takes part in a checkpoint (on by default "
     "with --checkpointing_interval: without it a live Event Hubs read never starts), e.g. "
     "--finish_bundle_before_checkpointing=false"),
    ("--shutdown_sources_after_idle_ms", int, None, "MS",
     "Flink streaming: end a source task that has had nothing to emit for MS milliseconds (Beam's "
     "default with checkpoints: never), e.g. --shutdown_sources_after_idle_ms=1000"),
    ("--state_backend", ("filesystem", "rocksdb"), None, None,
     "Flink streaming: where Beam's state lives and how checkpoints are written (with "
     "--state_backend_storage_path), e.g. --state_backend=filesystem"),
    ("--state_backend_storage_path", str, None, "URI",
     "Flink streaming: the directory checkpoints go to, one folder per job and checkpoint "
     "(JOB_ID/chk-N), e.g. --state_backend_storage_path=file:///var/ck"),
    ("--externalized_checkpoints_enabled", bool, None, None,
     "Flink streaming: keep the latest checkpoint when the job ends, so a new job can start from "
     "it, e.g. --externalized_checkpoints_enabled"),
    ("--retain_externalized_checkpoints_on_cancellation", bool, None, None,
     "Flink streaming: keep it on a cancel too, e.g. "
     "--retain_externalized_checkpoints_on_cancellation"),
    ("--savepoint_path", str, None, "PATH",
     "Flink streaming: start the job from this savepoint or retained checkpoint (a chk-N "
     "directory), e.g. --savepoint_path=/var/ck/JOB_ID/chk-42"),
    ("--flink_conf_dir", str, None, "DIR",
     "Flink: a directory with Flink's configuration file (config.yaml or flink-conf.yaml) for the "
     "job's Flink, e.g. --flink_conf_dir=/etc/flink"),
    ("--allow_non_restored_state", bool, None, None,
     "Flink streaming: start from a savepoint even if a step of it is no longer in the pipeline "
     "(its state is dropped), e.g. --allow_non_restored_state"),
)


#: The options classes of each pipeline command; an option of another command is an error.
COMMAND_OPTIONS = {
    "pipelines.stream": (ActivationOptions,),
    "pipelines.replay": (ActivationOptions, ReplayOptions),
}
