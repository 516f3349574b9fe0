"""``--state`` on Beam's Azure Blob file system (``azfs://``), on Azurite (docs/STATE.md).

Two ``replay`` runs over day 1 then day 2 with ``--state azfs://devstoreaccount1/<container>/...``
send the audience messages of one run over both days; the snapshot blob is under its final name
after the first run with no temporary name left; a corrupt snapshot blob is refused with one line
before any data moves.
"""
import os

import pytest

from tests.test_state_runs import SPLIT, _outputs, _per_user, _rfc, _run
from tests.test_state_runs import days  # noqa: F401  (the module fixture: data set and config)

pytestmark = pytest.mark.timeout(900)
ACCOUNT = "devstoreaccount1"
CONTAINER = "statejobs"


@pytest.fixture(scope="module")
def container(azurite):
    from azure.storage.blob import BlobServiceClient
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    client = service.get_container_client(CONTAINER)
    client.create_container()
    yield client
    client.delete_container()
    service.close()


def _names(container, prefix):
    return sorted(b.name for b in container.list_blobs(name_starts_with=prefix))


def _remote(azurite, *args, check=True):
    return _run("replay", *args, "--azure_connection_string", azurite.connection_string,
                check=check)


def test_two_daily_runs_with_state_on_azfs_give_the_messages_of_one_run(
        azurite, container, tmp_path, days):  # noqa: F811  (the fixture imported above)
    one = str(tmp_path / "one")
    _run("replay", days["config"], days["both"], one)
    one_messages, _, one_summary = _outputs(one)

    blob = "run/state/audiences.parquet"
    state = "azfs://%s/%s/%s" % (ACCOUNT, CONTAINER, blob)
    daily = str(tmp_path / "daily")
    first = _remote(azurite, days["config"], days["both"], daily, "--state", state,
                    "--end", _rfc(SPLIT))
    messages1, _, summary1 = _outputs(daily)
    # The snapshot is under its final name, and no temporary name is left beside it.
    assert _names(container, "run/") == [blob]
    assert container.download_blob(blob).readall()[:4] == b"PAR1"
    second = _remote(azurite, days["config"], days["both"], daily, "--state", state,
                     "--start", _rfc(SPLIT))
    messages2, _, summary2 = _outputs(daily)
    assert _names(container, "run/") == [blob]
    assert azurite.account_key not in first.stdout + first.stderr + second.stdout + second.stderr

    assert summary1["pending_wakeups"] > 0  # day 1 left exits for day 2 to send
    assert summary2["as_of"] == one_summary["as_of"]
    assert len(one_messages) > 30 and messages1 and messages2
    assert sorted(messages1 + messages2) == sorted(one_messages)
    assert _per_user(messages1 + messages2) == _per_user(one_messages)


def test_a_corrupt_snapshot_blob_is_refused_before_any_data_moves(
        azurite, container, tmp_path, days):  # noqa: F811  (the fixture imported above)
    blob = "corrupt/state/audiences.parquet"
    state = "azfs://%s/%s/%s" % (ACCOUNT, CONTAINER, blob)
    container.upload_blob(blob, b"not parquet at all")
    out = str(tmp_path / "out")
    proc = _remote(azurite, days["config"], days["day1"], out, "--state", state, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --state %s: " % state), proc.stderr
    assert "not a Parquet file" in lines[0]
    assert azurite.account_key not in proc.stdout + proc.stderr
    assert not os.path.exists(out)  # nothing moved
    assert _names(container, "corrupt/") == [blob]
    assert container.download_blob(blob).readall() == b"not parquet at all"
