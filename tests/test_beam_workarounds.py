from apache_beam.runners.worker import statecache

from transforms._beam_workarounds import cheaper_state_cache_sizing


def test_patched_sizing_gives_the_same_size_for_state_values():
    values = [b"x" * 500, b"", [], [b"abc", b"defg"], [b"y" * 40] * 3, [b"a", "not bytes"],
              {"k": b"v"}]
    before = [statecache.get_deep_size(v) for v in values]
    assert cheaper_state_cache_sizing()
    assert [statecache.get_deep_size(v) for v in values] == before


def test_shorter_sampling_period_is_the_new_default_and_the_sampler_still_samples():
    import time

    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from transforms._beam_workarounds import STATE_SAMPLING_PERIOD_MS, shorter_state_sampling_period

    assert shorter_state_sampling_period()
    assert shorter_state_sampling_period()  # applying it twice is harmless
    factory = CounterFactory()
    sampler = statesampler.StateSampler("step", factory)
    assert sampler.sampling_period_ms == STATE_SAMPLING_PERIOD_MS < statesampler.DEFAULT_SAMPLING_PERIOD_MS
    assert statesampler.StateSampler("step", factory, sampling_period_ms=300).sampling_period_ms == 300
    state = sampler.scoped_state("work", "process-msecs")
    sampler.start()
    with state:
        time.sleep(0.1)
    sampler.stop()
    sampler.commit_counters()
    assert sampler.get_info().transition_count >= 2
    assert state.sampled_msecs_int() > 0  # time spent in the state was sampled
