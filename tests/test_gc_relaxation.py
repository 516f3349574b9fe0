import gc

from pipelines.common import GC_YOUNG_THRESHOLD, relaxed_garbage_collection


def test_relaxed_collection_raises_the_young_threshold_and_restores_everything():
    before = gc.get_threshold()
    try:
        with relaxed_garbage_collection():
            assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
            assert gc.get_threshold()[1:] == before[1:]
            assert gc.get_freeze_count() > 0  # what imports made is out of the collector's walks
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_a_failing_run_restores_the_collector_too():
    before = gc.get_threshold()
    try:
        with relaxed_garbage_collection():
            raise RuntimeError("pipeline failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_command_exits_with_its_status_and_everything_frozen():
    import pytest
    from pipelines.common import exit_command
    try:
        with pytest.raises(SystemExit) as exited:
            exit_command(2)
        assert exited.value.code == 2
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
