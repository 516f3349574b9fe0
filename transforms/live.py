"""Building blocks of the output graph on an unbounded (live) input.

A bounded run groups with ``GroupByKey`` and writes each output once, at the end of the data. On an
unbounded input that cannot work: Beam refuses a ``GroupByKey`` in the global window with the
default trigger, since it would never fire. The unbounded branches of ``transforms/localsink.py``,
``transforms/blob.py`` and ``pipelines/wiring.py`` therefore collect in Beam state and write from
event-time timers, as the audience engine already does: when the watermark passes a time, not
when a processing-time clock says so. Why this and not triggers or processing-time timers:

* Event time makes the outputs a function of the input and the watermark, so TestStream drives
  them step by step (``tests/test_unbounded.py``) without a wall clock in the test.
* Measured with Beam 2.77 (before the pin to 2.62): the FnApiRunner (what the DirectRunner runs offline) emits a
  ``GroupByKey``'s output only when its input ends, whatever the trigger, so a trigger-based sink
  would write nothing during a local live run; and one processing-time timer makes the
  DirectRunner pick the BundleBasedDirectRunner, which cannot run a splittable DoFn (the Event
  Hubs source) in streaming mode at all. (The FnApiRunner does not follow a live source's
  watermark either: its event-time timers fire as soon as they are set. Only Flink, Dataflow and
  TestStream run these timers on time; see README "Live (unbounded) runs".)

This module holds what those branches share: the batching of one bundle's elements into one
element per state key (one state access per key and bundle instead of per record), timer times,
and the 24-hour dedupe of system events by id. No branch keeps all its state under one key: local
sinks key it by (sink, shard), the Blob export by (work, window), the dedupe by event id.
"""
import logging
import typing

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from cdp_activation.core.records import DEDUPE_HORIZON_US, SystemEvent

_LOGGER = logging.getLogger(__name__)

#: The last time a timer may be set for in the global window (runners keep milliseconds).
_LAST_TIMER_US = GlobalWindow().max_timestamp().micros // 1000 * 1000
_FIRST_TIMER_US = MIN_TIMESTAMP.micros // 1000 * 1000 + 1000


def is_unbounded(pcoll: beam.PCollection) -> bool:
    """Whether ``pcoll`` never ends (a live source, TestStream); its consumers must not group."""
    return not pcoll.is_bounded


def timer_at(micros: int) -> Timestamp:
    """A timer timestamp for ``micros``: rounded up to the millisecond and kept inside the global
    window.

    Runners keep timers and watermarks in milliseconds (Flink, Dataflow, and Beam's own Python
    runners): a timer for 10.000500 s fires at 10.000 s, before what it waits for is due, and
    setting it again would loop forever. Rounded up, it fires once the watermark has passed the
    exact time; the audience engine then evaluates every point up to the firing time at its exact
    microsecond, so messages keep their exact times.
    """
    rounded = -(-int(micros) // 1000) * 1000
    return Timestamp(micros=min(max(rounded, _FIRST_TIMER_US), _LAST_TIMER_US))


class _Values:
    """The values of a :class:`Values`, as a picklable callable."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, unused_impulse):
        return self.values


class Values(beam.PTransform):
    """The given values, in the global window: what ``beam.Create`` gives for a handful of values,
    built from an impulse only.

    ``beam.Create`` wraps its values in a composite ``MaybeReshuffle`` that Beam 2.62 writes as a
    pickled Python transform, which Prism cannot run ("unsupported feature ... pickled_python").
    The pipelines' own one-off elements (works started, a disabled work's event, sentinels) need
    no reshuffle: there are a few of them.

    ``element_type``: the type hint of the values (default: any), hence their coder; a
    PCollection flattened with others must have their coder (Prism gives a Flatten's inputs
    its output's coder).
    """

    def __init__(self, values: typing.Iterable[typing.Any], label: typing.Optional[str] = None,
                 element_type: typing.Any = None) -> None:
        super().__init__(label)
        self._values = list(values)
        self._element_type = element_type

    @no_annotations
    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[typing.Any]:
        values = beam.FlatMap(_Values(self._values))
        if self._element_type is not None:
            values = values.with_output_types(self._element_type)
        return (pbegin
                | "Impulse" >> beam.Impulse()
                | "Values" >> values)


class _BatchPerBundle(beam.DoFn):
    """Collects a bundle's elements per window and key and emits ``(key, [elements])`` at its
    end; ``key_of(element)`` gives the key.

    The batch is timestamped with its earliest element, so a timer set from it is never later
    than one set from any of its elements.
    """

    def __init__(self, key_of):
        self._key_of = key_of
        self._batches = None

    def start_bundle(self):
        self._batches = {}

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        slot = (window, self._key_of(element))
        batch = self._batches.get(slot)
        if batch is None:
            self._batches[slot] = [timestamp, [element]]
        else:
            batch[0] = min(batch[0], timestamp)
            batch[1].append(element)

    def finish_bundle(self):
        for (window, key), (timestamp, elements) in self._batches.items():
            yield WindowedValue((key, elements), timestamp, [window])
        self._batches = {}


class _Constant:
    def __init__(self, value):
        self._value = value

    def __call__(self, unused_element):
        return self._value


class BatchPerBundle(beam.PTransform):
    """``element`` to ``(key, [elements of the bundle with that key])``: the input of a stateful
    step, so its state is touched once per key and bundle rather than once per record.

    ``key``: a function of the element giving its state key (``key_type`` the type of those
    keys), or one constant key for every element.
    """

    def __init__(self, key: typing.Any, key_type: typing.Any = None,
                 label: typing.Optional[str] = None) -> None:
        super().__init__(label)
        if callable(key):
            if key_type is None:
                raise ValueError("BatchPerBundle with a key function needs key_type")
            self._key_of, self._key_type = key, key_type
        else:
            self._key_of, self._key_type = _Constant(key), type(key)

    @no_annotations
    def expand(self, pcoll: beam.PCollection[typing.Any]
               ) -> beam.PCollection[typing.Tuple[typing.Any, typing.List[typing.Any]]]:
        # Typed, so the stateful step after it gets a deterministic key coder.
        return pcoll | "Batch" >> beam.ParDo(_BatchPerBundle(self._key_of)).with_output_types(
            typing.Tuple[self._key_type, typing.Any])


class _FirstCopyPerId(beam.DoFn):
    """Passes the first copy of each system event id; drops copies within 24 h of it.

    State per id: the ``received_at`` of the copy passed last. An event-time timer clears it once
    the watermark passes that ``received_at`` + 24 h: a copy arriving after that was enqueued
    after the watermark, hence more than 24 h after the kept copy, and starts a new run anyway.
    """

    KEPT = ReadModifyWriteStateSpec("kept_received_at", VarIntCoder())
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def process(self, element, kept=beam.DoFn.StateParam(KEPT),
                expire=beam.DoFn.TimerParam(EXPIRE)):
        _, event = element
        first = kept.read()
        if first is not None and abs(event.received_at - first) < DEDUPE_HORIZON_US:
            return  # a copy: dropped, uncounted, as the bounded dedupe of system events does
        if first is None or event.received_at > first:
            # A new run of copies: the 24 h now count from this copy.
            kept.write(event.received_at)
            expire.set(timer_at(event.received_at + DEDUPE_HORIZON_US))
        yield event

    @on_timer(EXPIRE)
    def forget(self, kept=beam.DoFn.StateParam(KEPT)):
        kept.clear()


def _key_by_id(event):
    return event.id, event


class DedupeSystemEventsLive(beam.PTransform):
    """The 24-hour dedupe of system events by id on an unbounded input (see docs/SEMANTICS.md).

    The first copy to *arrive* is passed at once; the bounded rule keeps the earliest by
    ``received_at``. The two agree whenever copies arrive in ``received_at`` order.
    """

    @no_annotations
    def expand(self, events: beam.PCollection[SystemEvent]) -> beam.PCollection[SystemEvent]:
        return (events
                | "KeyById" >> beam.Map(_key_by_id).with_output_types(typing.Tuple[str, typing.Any])
                | "FirstCopyPerId" >> beam.ParDo(_FirstCopyPerId()))
