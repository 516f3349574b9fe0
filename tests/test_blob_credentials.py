"""The azure_blob_event_export work's credentials against Azurite: the launcher's check, the one
retry policy for Azure writes, one-line errors that carry no secret, and a wrong key then the
right one (the files: ``test_blob_export.py``).
"""
import logging

import pytest
from apache_beam.transforms.display import DisplayData

from cdp_activation.core import export
from cdp_activation.core.timeutil import MICROS, parse_time
from cdp_activation.clients.blob import CONNECT_BACKOFF_S, AzureDestination, BlobExportError
from cdp_activation.clients.markers import verify_credentials
from cdp_activation.clients.retry import RetryPolicy
from cdp_activation.transforms import blob
from cdp_activation.transforms.blob import make_destination
from tests.blob_runs import (ACCOUNT, AID, H, T0, container_client, contents, data_blobs,
                             dead_port, launch, make_work, new_container, sample_rows)
from tests.faultproxy import FaultProxy
from tests.fixtures_azurite import connection_string


# -- credentials -------------------------------------------------------------------------------

def test_verify_credentials_cleans_up(azurite, tmp_path):
    container = new_container()
    destination = make_destination(make_work(azurite.connection_string, container).settings)
    verify_credentials(destination, "w-blob")
    assert destination.list_names() == []
    destination.close()


def test_verify_credentials_removes_checks_left_by_interrupted_activations(azurite):
    container = new_container()
    destination = make_destination(make_work(azurite.connection_string, container).settings)
    # An earlier activation killed between its write and its delete, and other works' blobs.
    left = ["acme/events/_verify/w-blob_1793491200.txt"]
    others = ["acme/events/_verify/w-blob_x_1793491200.txt", "acme/events/_verify/w-blob2_1.txt",
              "acme/events/w-blob_1793491200.txt"]
    for name in left + others:
        destination.put(name, b"x")
    verify_credentials(destination, "w-blob")
    assert destination.list_names() == sorted(others)
    destination.close()


def test_azure_writes_are_retried_by_the_one_policy_counting_attempts(azurite):
    """Dropped connections are retried with the policy's backoff (waits recorded, not slept);
    the SDK's own retries are off, so every attempt is one request through the proxy."""
    container = new_container()
    container_client(azurite, container).create_container()
    with FaultProxy(("127.0.0.1", azurite.port), name="blob-retry") as proxy:
        waits = []
        destination = AzureDestination(connection_string(proxy.port), container,
                                       retry=RetryPolicy(4, 2.0, sleep=waits.append))
        proxy.on_pattern(b"PUT /devstoreaccount1/%s/f.csv" % container.encode(), "reset",
                         times=2)
        destination.put("f.csv", b"a,b\n", content_type="text/csv")
        assert proxy.counters()["resets"] == 2
        assert len(waits) == 2 and 0 <= waits[0] <= 2.0 and 0 <= waits[1] <= 4.0
        assert destination.get("f.csv") == b"a,b\n" and len(waits) == 2
        proxy.on_pattern(b"GET /devstoreaccount1/%s/f.csv" % container.encode(), "reset",
                         times=4)
        with pytest.raises(BlobExportError) as info:
            destination.get("f.csv")
        assert len(waits) == 5 and proxy.counters()["resets"] == 6    # 4 attempts in all
        assert str(info.value).startswith("cannot read f.csv in storage account")
        destination.close()


def test_a_dead_endpoint_is_retried_once_after_the_connect_backoff(azurite):
    waits = []
    destination = AzureDestination(connection_string(dead_port()), new_container(),
                                   retry=RetryPolicy(4, 2.0, sleep=waits.append))
    with pytest.raises(BlobExportError) as info:
        destination.put("f.csv", b"x")
    assert waits == [CONNECT_BACKOFF_S] and info.value.kind == "unreachable"
    destination.close()


@pytest.mark.parametrize("case", ["wrong_key", "not_base64", "dead_port"])
def test_verify_credentials_one_line_error(azurite, case):
    key = {"wrong_key": azurite.wrong_key, "not_base64": "not-base64!*", "dead_port": None}[case]
    conn = (connection_string(dead_port()) if case == "dead_port"
            else connection_string(azurite.port, key))
    work = make_work(conn, new_container())
    destination = make_destination(work.settings)
    with pytest.raises(BlobExportError) as info:
        verify_credentials(destination, work.id)
    message = str(info.value)
    assert "\n" not in message and "w-blob" in message
    assert conn not in message and "AccountKey" not in message
    assert (key or azurite.account_key) not in message and azurite.account_key not in message
    if case == "dead_port":
        assert info.value.kind == "unreachable" and "unreachable" in message
    else:
        assert info.value.kind == "credentials" and "credentials rejected" in message


def test_verify_blob_that_may_not_be_deleted_is_left_and_logged(azurite, caplog):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    container = new_container()
    container_client(azurite, container).create_container()
    sas = generate_container_sas("devstoreaccount1", container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(write=True, create=True,
                                                                    read=True),
                                 expiry=parse_time("2099-01-01T00:00:00Z") // MICROS)
    conn = "BlobEndpoint=http://127.0.0.1:%d/devstoreaccount1;SharedAccessSignature=%s" % (
        azurite.port, sas)
    destination = make_destination(make_work(conn, container).settings)
    with caplog.at_level(logging.WARNING, logger="cdp_activation.clients.markers"):
        verify_credentials(destination, "w-blob")
    left = [b.name for b in container_client(azurite, container).list_blobs()]
    assert len(left) == 1 and left[0].startswith("acme/events/_verify/w-blob_")
    assert left[0] in caplog.text and "left in place" in caplog.text
    assert sas not in caplog.text and "sig=" not in caplog.text


def test_wrong_key_then_right_key_then_rerun(azurite, tmp_path, caplog):
    container = new_container()
    records = sample_rows()
    expected = export.render_files(records, make_work(None, container).settings, ACCOUNT, "w-blob")

    # 1. Wrong key: the check fails, nothing is written, one failed event, no secret anywhere.
    bad = make_work(azurite.wrong_key_connection_string, container)
    with caplog.at_level(logging.DEBUG):
        run, _ = launch(bad, records, tmp_path)
    assert [e.verb for e in run.events] == ["failed"]
    notes = run.events[0].data["notes"]
    assert "credentials rejected" in notes
    for secret in (azurite.wrong_key, azurite.wrong_key_connection_string, azurite.account_key):
        assert secret not in notes and secret not in caplog.text
    assert data_blobs(azurite, container) == {}
    assert run.counters["failures"] == 1

    # 2. The right key: every window, then the marker.
    good = make_work(azurite.connection_string, container)
    run, marker = launch(good, records, tmp_path)
    assert marker is None
    first = data_blobs(azurite, container)
    assert contents(first) == expected
    assert len(run.verbs("synced")) == len(expected) and len(run.verbs("synccomplete")) == 1

    # 3. Again: the marker holds the place; no window is written twice.
    run, marker = launch(good, records, tmp_path)
    assert marker == T0 + 6 * H
    assert run.events == []
    assert data_blobs(azurite, container) == first       # same bytes and same etags
    assert run.counters["skipped_before_marker"] == 7    # every exported row was before it
    assert run.counters.get("files_delivered", 0) == 0


def test_display_data_has_no_secret(azurite):
    work = make_work(azurite.connection_string, new_container())
    transform = blob.WriteToBlobExport(work, ACCOUNT, AID, "out", marker_end=T0)
    items = DisplayData.create_from(transform).items
    text = repr([(i.key, i.value) for i in items]) + repr(transform._recipe)
    assert azurite.account_key not in text and "AccountKey" not in text
    assert {"work_id": "w-blob", "destination": "azure"}.items() <= {i.key: i.value
                                                                     for i in items}.items()
