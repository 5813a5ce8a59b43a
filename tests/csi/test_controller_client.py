"""The daemon's Controller-service client against csi-loop in Controller mode (a separate
process): capability discovery, idempotent CreateVolume/DeleteVolume, and the sidecars' error
mapping, which differs from the node client's on RESOURCE_EXHAUSTED."""

from __future__ import annotations

import pytest

from operation_executor.errors import FinalError, UncertainError
from volumemanager.csi import client as node_client
from volumemanager.csi.controller_client import CSIControllerClient
from volumemanager.csi.registration import probe_controller

MiB = 1024 * 1024


def cap():
    mode = node_client.csi_pb2.VolumeCapability.AccessMode.Mode.Value("SINGLE_NODE_WRITER")
    return [node_client.volume_capability(False, mode, "ext4")]


@pytest.fixture
def controller(require_loop, csi_loop):
    plugin = csi_loop(registration=False, extra_args=["--controller", "--capacity", "64Mi"])
    calls: list[tuple[str, str]] = []
    client = CSIControllerClient(plugin.endpoint, timeout=2, observer=lambda m, code, s: calls.append((m, code)))
    yield plugin, client, calls
    client.close()


def test_capabilities_and_idempotent_create_delete(controller):
    plugin, client, calls = controller
    assert "CONTROLLER_SERVICE" in client.get_plugin_capabilities()
    assert {"CREATE_DELETE_VOLUME"} <= client.controller_get_capabilities()
    a = client.create_volume("pvc-1", cap(), 8 * MiB, {"x": "y"})
    b = client.create_volume("pvc-1", cap(), 8 * MiB, {"x": "y"})
    assert a.volume_id == b.volume_id and a.capacity_bytes >= 8 * MiB
    client.delete_volume(a.volume_id)
    client.delete_volume(a.volume_id)  # the spec: deleting what is gone is a success
    assert ("CreateVolume", "OK") in calls and ("DeleteVolume", "OK") in calls


def test_error_mapping_is_the_sidecars(controller):
    plugin, client, calls = controller
    with pytest.raises(FinalError) as e:  # the node client would call this uncertain
        client.create_volume("too-big", cap(), 128 * MiB)
    assert e.value.code == "RESOURCE_EXHAUSTED" and ("CreateVolume", "RESOURCE_EXHAUSTED") in calls
    plugin.set_fault("CreateVolume", code="UNAVAILABLE", count=1)
    with pytest.raises(UncertainError) as e:
        client.create_volume("pvc-2", cap(), MiB)
    assert e.value.code == "UNAVAILABLE"
    plugin.set_fault("CreateVolume", sleep=3, count=1)
    with pytest.raises(UncertainError) as e:
        client.create_volume("pvc-2", cap(), MiB)
    assert e.value.code == "DEADLINE_EXCEEDED"
    plugin.set_fault("DeleteVolume", code="INVALID_ARGUMENT", message="no such thing", count=1)
    with pytest.raises(FinalError) as e:
        client.delete_volume("whatever")
    assert e.value.code == "INVALID_ARGUMENT" and "no such thing" in e.value.message


def test_probe_finds_the_controller_or_says_there_is_none(require_loop, csi_loop):
    with_controller = csi_loop(name="c.test", registration=False, extra_args=["--controller"])
    node_only = csi_loop(name="n.test", registration=False)
    found = probe_controller(with_controller.endpoint, None, 5)
    assert found["controller_endpoint"] == with_controller.endpoint
    assert "CREATE_DELETE_VOLUME" in found["controller_capabilities"]
    none = probe_controller(node_only.endpoint, None, 5)
    assert "controller_endpoint" not in none
    # --csi-controller: the given endpoint is asked, whatever the node socket says.
    override = probe_controller(node_only.endpoint, with_controller.endpoint, 5)
    assert override["controller_endpoint"] == with_controller.endpoint
