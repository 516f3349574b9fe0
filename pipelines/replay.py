"""Batch replay of archived events: the same engine and outputs as ``pipelines.stream``, built for speed.

    python -m pipelines.replay --config FILE --input GLOB [--start T] [--end T] [--output_dir DIR]

Each user's history is grouped once (GroupByKey) and evaluated in one call of the pure engine, so
there is no per-element state. ``--start``/``--end`` keep records with ``start <= ts < end``; a
bound is a date (its UTC midnight), an RFC 3339 time or epoch seconds.
"""
# Ctrl-C is handled from here on, before Beam's import (seconds long) starts.
from cdp_activation.core.interrupt import exit_on_interrupt
if __name__ == "__main__":
    exit_on_interrupt()

import re  # noqa: E402
from typing import List, Optional  # noqa: E402

from cdp_activation.core.config import ConfigError  # noqa: E402
from cdp_activation.core.timeutil import TimeFormatError, parse_time  # noqa: E402
from pipelines.launch import exit_command, main  # noqa: E402
from pipelines.options import ReplayOptions  # noqa: E402
from cdp_activation.transforms.audiences import EvaluateAudiencesBatch  # noqa: E402

HELP = (
    "python -m pipelines.replay --config FILE --input GLOB [--start T] [--end T] [options] "
    "[Beam options]",
    "Batch replay of archived events (JSON Lines or Parquet): the same engine and outputs as\n"
    "pipelines.stream, each user's history evaluated in one call. --start/--end keep records\n"
    "with start <= ts < end; the others are counted as outside_time_range.",
    ("python -m pipelines.replay --config examples/config.yaml --input examples/events.jsonl",
     "python -m pipelines.replay --config examples/config.yaml --input 'archive/2026-11-*.jsonl' "
     "--start 2026-11-20 --end 2026-11-21 --output_dir /tmp/day20"))

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EPOCH = re.compile(r"^\d+(\.\d+)?$")


def parse_bound(value: str) -> int:
    """A ``--start``/``--end`` value in microseconds: ``2026-11-20`` (UTC midnight), RFC 3339,
    or epoch seconds. Raises ``TimeFormatError``."""
    text = value.strip()
    if _DATE.match(text):
        return parse_time(text + "T00:00:00Z")
    if _EPOCH.match(text):
        return parse_time(float(text) if "." in text else int(text))
    return parse_time(text)


def _time_range(options):
    replay = options.view_as(ReplayOptions)
    bounds = []
    for name in ("start", "end"):
        value = getattr(replay, name)
        if value is None:
            bounds.append(None)
            continue
        try:
            bounds.append(parse_bound(value))
        except TimeFormatError as exc:
            raise ConfigError("--%s: %s (expected a date such as 2026-11-20, an RFC 3339 time "
                              "such as 2026-11-20T06:00:00Z, or epoch seconds)" % (name, exc)) from None
    if bounds == [None, None]:
        return None
    if None not in bounds and bounds[0] >= bounds[1]:
        raise ConfigError("--start must be before --end")
    return tuple(bounds)


def run(argv: Optional[List[str]] = None) -> int:
    return main(argv, "replay", EvaluateAudiencesBatch, time_range_of=_time_range, help_text=HELP)


if __name__ == "__main__":
    exit_command(run())
