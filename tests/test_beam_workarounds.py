from apache_beam.runners.worker import statecache

from transforms._beam_workarounds import cheaper_state_cache_sizing


def test_patched_sizing_gives_the_same_size_for_state_values():
    values = [b"x" * 500, b"", [], [b"abc", b"defg"], [b"y" * 40] * 3, [b"a", "not bytes"],
              {"k": b"v"}]
    before = [statecache.get_deep_size(v) for v in values]
    assert cheaper_state_cache_sizing()
    assert [statecache.get_deep_size(v) for v in values] == before
