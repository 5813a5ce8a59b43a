"""CSINodeClient against the real csi-loop plugin process, including its fault knobs."""

from __future__ import annotations

import time

import pytest

from operation_executor.errors import FinalError, UncertainError
from volumemanager._proto.csi.v1 import csi_pb2
from volumemanager.csi.client import (
    CSINodeClient,
    access_mode,
    sanitize_request,
    socket_path_of,
    volume_capability,
)

SECRET_VALUE = "hunter2-do-not-log"


def test_identity_and_node_info(csi_loop) -> None:
    plugin = csi_loop(node_id="node-a")
    with CSINodeClient(plugin.endpoint, timeout=5) as client:
        assert client.node_get_info().node_id == "node-a"
        assert client.node_get_capabilities() == {"STAGE_UNSTAGE_VOLUME", "EXPAND_VOLUME", "GET_VOLUME_STATS"}
        assert client.probe() is True
        assert client.get_plugin_info().name == "csi-loop.test"
    assert [c["method"] for c in plugin.calls()] == ["NodeGetInfo", "NodeGetCapabilities", "Probe", "GetPluginInfo"]


def test_no_stage_driver_capabilities(csi_loop) -> None:
    plugin = csi_loop(no_stage=True)
    with CSINodeClient(plugin.endpoint, timeout=5) as client:
        assert "STAGE_UNSTAGE_VOLUME" not in client.node_get_capabilities()


def test_channel_is_reused(csi_loop) -> None:
    plugin = csi_loop()
    client = CSINodeClient(plugin.endpoint, timeout=5)
    try:
        client.node_get_info()
        channel = client._channel
        client.node_get_info()
        assert client._channel is channel
    finally:
        client.close()
    assert client._channel is None


def test_internal_error_is_final_with_code(csi_loop) -> None:
    plugin = csi_loop()
    plugin.set_fault("NodeUnstageVolume", code="INTERNAL", message="disk on fire", count=1)
    with CSINodeClient(plugin.endpoint, timeout=5) as client:
        with pytest.raises(FinalError) as exc:
            client.node_unstage_volume("vol1", "/tmp/nowhere")
        assert exc.value.code == "INTERNAL"
        assert "disk on fire" in exc.value.message
        assert "NodeUnstageVolume" in exc.value.message
        # count=1: the next call goes through.
        client.node_unstage_volume("vol1", "/tmp/nowhere")
    assert plugin.faults() == {}


@pytest.mark.parametrize("code", ["NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "ALREADY_EXISTS", "UNIMPLEMENTED"])
def test_final_codes(csi_loop, code: str) -> None:
    plugin = csi_loop()
    plugin.set_fault("NodeUnpublishVolume", code=code, count=1)
    with CSINodeClient(plugin.endpoint, timeout=5) as client:
        with pytest.raises(FinalError) as exc:
            client.node_unpublish_volume("vol1", "/tmp/nowhere")
    assert exc.value.code == code


@pytest.mark.parametrize("code", ["ABORTED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED"])
def test_uncertain_codes(csi_loop, code: str) -> None:
    plugin = csi_loop()
    plugin.set_fault("NodeUnpublishVolume", code=code, count=1)
    with CSINodeClient(plugin.endpoint, timeout=5) as client:
        with pytest.raises(UncertainError) as exc:
            client.node_unpublish_volume("vol1", "/tmp/nowhere")
    assert exc.value.code == code


@pytest.mark.timeout(30)
def test_deadline_is_uncertain(csi_loop) -> None:
    plugin = csi_loop()
    plugin.set_fault("NodeUnpublishVolume", sleep=3, count=1)
    with CSINodeClient(plugin.endpoint, timeout=1) as client:
        started = time.monotonic()
        with pytest.raises(UncertainError) as exc:
            client.node_unpublish_volume("vol1", "/tmp/nowhere")
        elapsed = time.monotonic() - started
    assert exc.value.code == "DEADLINE_EXCEEDED"
    assert elapsed < 2.5
    # The driver did receive the call (it is "possibly still running"): that is why it is uncertain.
    assert len(plugin.calls("NodeUnpublishVolume")) == 1


@pytest.mark.timeout(30)
def test_driver_not_running_is_uncertain_unavailable(tmp_path) -> None:
    with CSINodeClient(f"unix://{tmp_path}/missing.sock", timeout=1) as client:
        with pytest.raises(UncertainError) as exc:
            client.node_get_info()
    assert exc.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_secrets_never_in_errors(csi_loop) -> None:
    plugin = csi_loop()
    plugin.set_fault("NodeStageVolume", code="PERMISSION_DENIED", message="bad credentials", count=1)
    cap = volume_capability(block=False, access=access_mode(["ReadWriteOnce"]), fs_type="ext4")
    with CSINodeClient(plugin.endpoint, timeout=5) as client:
        with pytest.raises(FinalError) as exc:
            client.node_stage_volume("vol1", str(tmp_path_dir(plugin)), cap, secrets={"password": SECRET_VALUE})
    assert SECRET_VALUE not in str(exc.value) and SECRET_VALUE not in repr(exc.value)
    log_text = (plugin.state_dir / "calls.log").read_text() + plugin.stderr_tail(1000)
    assert SECRET_VALUE not in log_text
    assert plugin.calls("NodeStageVolume")[0]["secret_keys"] == 1


def tmp_path_dir(plugin) -> str:
    d = plugin.base_dir / "staging"
    d.mkdir(exist_ok=True)
    return str(d)


def test_sanitize_request_strips_secrets_and_mount_flags() -> None:
    req = csi_pb2.NodePublishVolumeRequest(
        volume_id="vol1",
        target_path="/t",
        secrets={"password": SECRET_VALUE},
        volume_context={"size": "1Gi"},
        volume_capability=volume_capability(False, access_mode(["ReadWriteMany"]), "ext4", ["password=" + SECRET_VALUE]),
    )
    text = sanitize_request(req)
    assert SECRET_VALUE not in text
    assert "***stripped***" in text
    assert '"volume_id": "vol1"' in text and '"size": "1Gi"' in text
    expand = csi_pb2.NodeExpandVolumeRequest(volume_id="v", secrets={"k": SECRET_VALUE})
    assert SECRET_VALUE not in sanitize_request(expand)


def test_access_mode_mapping() -> None:
    mode = csi_pb2.VolumeCapability.AccessMode
    assert access_mode([]) == mode.SINGLE_NODE_WRITER
    assert access_mode(["ReadWriteOnce"]) == mode.SINGLE_NODE_WRITER
    assert access_mode(["ReadOnlyMany", "ReadWriteOnce"]) == mode.MULTI_NODE_READER_ONLY
    assert access_mode(["ReadWriteMany"]) == mode.MULTI_NODE_MULTI_WRITER
    assert access_mode(["ReadWriteOncePod"]) == mode.SINGLE_NODE_WRITER
    assert access_mode(["ReadWriteOncePod"], single_node_multi_writer=True) == mode.SINGLE_NODE_SINGLE_WRITER
    assert access_mode(["ReadWriteOnce"], single_node_multi_writer=True) == mode.SINGLE_NODE_MULTI_WRITER
    with pytest.raises(FinalError):
        access_mode(["Sometimes"])


def test_socket_path_of() -> None:
    assert socket_path_of("unix:///run/x.sock") == "/run/x.sock"
    assert socket_path_of("unix:/run/x.sock") == "/run/x.sock"
    assert socket_path_of("/run/x.sock") == "/run/x.sock"
    for bad in ("tcp://1.2.3.4:5", "unix://relative.sock", "x.sock"):
        with pytest.raises(ValueError):
            socket_path_of(bad)
