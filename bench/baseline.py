"""The naive Beam baseline: parse, key by user, one ReadModifyWrite state read and write plus one
event-time timer set per event, nothing else. ``python -m bench.baseline --input F [BEAM OPTIONS]``.

Beam options go to the pipeline, and the runner gets the defaults the pipeline commands give it
(``pipelines.runners.runner_environment``): ``--runner=FlinkRunner`` runs on the same embedded
Flink, job server, worker pool and parallelism as ``pipelines.stream`` and ``pipelines.replay``."""
import argparse
import datetime
import json
import sys

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from pipelines.runners import runner_environment


class _CountPerUser(beam.DoFn):
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), wake=beam.DoFn.TimerParam(WAKE)):
        _, ts = element
        count.write((count.read() or 0) + 1)
        wake.set(Timestamp(seconds=ts))

    @on_timer(WAKE)
    def fired(self):
        return []


def _key(line):
    """(user key, event time in seconds); system events have no user and are left out."""
    record = json.loads(line)
    key = record.get("user_id") or record.get("anonymous_id")
    if not key:
        return []
    ts = record["ts"]
    if isinstance(ts, str):
        ts = datetime.datetime.fromisoformat(ts).timestamp()
    return [(key, ts)]


def run(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    known, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(beam_args)
    with runner_environment(options):
        with beam.Pipeline(options=options) as p:
            (p | "Read" >> beam.io.ReadFromText(known.input)
               | "Parse" >> beam.FlatMap(_key)
               | "StatePerEvent" >> beam.ParDo(_CountPerUser()))
    return 0


if __name__ == "__main__":
    sys.exit(run())
