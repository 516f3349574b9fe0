"""Batch replay of archived events: the same engine and outputs as ``pipelines.stream``, built for speed.

    python -m pipelines.replay --config FILE --input GLOB [--start T] [--end T] [--output_dir DIR]

Each user's history is grouped once (GroupByKey) and evaluated in one call of the pure engine, so
there is no per-element state. ``--start``/``--end`` keep records with ``start <= ts < end``.
"""

from core.config import ConfigError
from core.timeutil import TimeFormatError, parse_time
from pipelines.common import exit_command, main
from pipelines.options import ReplayOptions
from transforms.audiences import EvaluateAudiencesBatch


def _time_range(options):
    replay = options.view_as(ReplayOptions)
    bounds = []
    for name in ("start", "end"):
        value = getattr(replay, name)
        if value is None:
            bounds.append(None)
            continue
        try:
            bounds.append(parse_time(float(value) if value.replace(".", "", 1).isdigit() else value))
        except TimeFormatError as exc:
            raise ConfigError("--%s: %s" % (name, exc)) from None
    if bounds == [None, None]:
        return None
    if None not in bounds and bounds[0] >= bounds[1]:
        raise ConfigError("--start must be before --end")
    return tuple(bounds)


def run(argv=None):
    return main(argv, "replay", EvaluateAudiencesBatch, time_range_of=_time_range)


if __name__ == "__main__":
    exit_command(run())
