"""Which CSI volumes take a pod's fsGroup and how (issue 13.3): the kubelet's
``supportsFSGroup`` (csi_mounter.go) and VOLUME_MOUNT_GROUP delegation, asked of the CSI plugin
with a driver registered in a real ``DriverRegistry`` and the CSIDriver policy from a lookup.
The end-to-end behaviour with the daemon and csi-loop is in tests/e2e/test_fsgroup.py."""

from __future__ import annotations

import time

import pytest

from operation_executor.plugin import FS_GROUP_MOUNT_GROUP, FS_GROUP_WALK
from operation_executor.types import VolumeSpec
from volumemanager.csi.registry import DriverInfo, DriverRegistry
from volumemanager.manifests.models import CSISource
from volumemanager.plugins.csi import CSIPlugin

DRIVER = "fsg.test"


def plugin(policy: str | None, caps: tuple[str, ...] = ("STAGE_UNSTAGE_VOLUME",)) -> CSIPlugin:
    reg = DriverRegistry()
    reg.add(DriverInfo(DRIVER, "/nonexistent.sock", "node1", frozenset(caps), 0, "static", time.time()))
    return CSIPlugin(None, reg, fs_group_policy=lambda name: policy if name == DRIVER else None)  # type: ignore[arg-type]


def spec(fs_type: str | None = "ext4", modes: tuple[str, ...] = ("ReadWriteOnce",), handle: str | None = "h1",
         fs_group: int | None = None) -> VolumeSpec:
    src = CSISource(driver=DRIVER, volume_handle=handle, fs_type=fs_type, volume_attributes={}, read_only=False)
    return VolumeSpec(name="pv", plugin_name="kubernetes.io/csi", source=src, access_modes=modes, fs_group=fs_group)


@pytest.mark.parametrize("policy,kw,mode,reason", [
    (None, {}, FS_GROUP_WALK, None),  # no CSIDriver: ReadWriteOnceWithFSType
    ("ReadWriteOnceWithFSType", {"modes": ("ReadWriteOncePod",)}, FS_GROUP_WALK, None),
    ("ReadWriteOnceWithFSType", {"fs_type": None}, None, "fsGroupPolicy ReadWriteOnceWithFSType: the volume has no fsType"),
    ("ReadWriteOnceWithFSType", {"modes": ("ReadWriteMany",)}, None,
     "fsGroupPolicy ReadWriteOnceWithFSType: the volume is not ReadWriteOnce"),
    ("ReadWriteOnceWithFSType", {"handle": None}, None,
     "fsGroupPolicy ReadWriteOnceWithFSType: the volume is not ReadWriteOnce"),  # inline: no access modes
    ("File", {"fs_type": None, "modes": ("ReadWriteMany",)}, FS_GROUP_WALK, None),
    ("None", {}, None, f"CSIDriver {DRIVER} has fsGroupPolicy None"),
])
def test_walk_rules(policy, kw, mode, reason):
    p = plugin(policy)
    s = spec(**kw)
    assert p.fs_group_mode(s) == mode
    if reason is not None:
        assert p.fs_group_skip_reason(s) == reason


def test_volume_mount_group_capability_delegates_and_is_sent_as_decimal():
    p = plugin(None, ("STAGE_UNSTAGE_VOLUME", "VOLUME_MOUNT_GROUP"))
    assert p.fs_group_mode(spec(fs_type=None, modes=("ReadWriteMany",))) == FS_GROUP_MOUNT_GROUP
    info = p.registry.get(DRIVER)
    assert p._capability(spec(fs_group=2000), info).mount.volume_mount_group == "2000"
    assert p._capability(spec(), info).mount.volume_mount_group == ""  # no fsGroup: none sent
    assert plugin(None)._capability(spec(fs_group=2000), info).mount.volume_mount_group == "2000"
    without = plugin(None).registry.get(DRIVER)
    assert p._capability(spec(fs_group=2000), without).mount.volume_mount_group == "", "driver without the capability"
