"""The fsGroup step of the mount operation (issue 13.3): after a successful SetUp the pod's
view gets the group as the plugin says (``fs_group_mode``), the result lands in the actual
state, and a walk that cannot finish is an uncertain error of the mount naming the path.

The plugin here sets up a plain directory of the test (no mount needed for the walk); the
walk, the caches and the generator are the real ones."""

from __future__ import annotations

import os
import stat

import pytest

from operation_executor.errors import UncertainError
from operation_executor.generator import SET_VOLUME_OWNERSHIP, OperationGenerator
from operation_executor.plugin import FS_GROUP_MOUNT_GROUP, FS_GROUP_WALK, PluginRegistry, VolumePlugin
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import PodRef, VolumeSpec, VolumeToMount
from volumemanager.cache.actual_state import ActualStateOfWorld

pytestmark = pytest.mark.timeout(30)

GID = 4321


class DirPlugin(VolumePlugin):
    """Sets up ``<base>/<pod uid>/<volume>`` as it was prepared by the test; records the
    spec each set_up saw."""

    name = "test/dir"

    def __init__(self, base: str, mode: str | None) -> None:
        super().__init__(host=None)  # type: ignore[arg-type]
        self.base = base
        self.mode = mode
        self.seen: list[VolumeSpec] = []

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        return self.mode

    def mount_path(self, spec, pod, outer_name):
        return os.path.join(self.base, pod.uid, outer_name)

    def set_up(self, spec, pod, outer_name, device_mount_path):
        self.seen.append(spec)

    def tear_down(self, spec, pod, outer_name, mount_path):
        pass


def world(tmp_path, mode, read_only=False, fs_group=GID, policy=None):
    plugin = DirPlugin(str(tmp_path), mode)
    reg = PluginRegistry()
    reg.register(plugin)
    asw = ActualStateOfWorld()
    observed = []
    gen = OperationGenerator(reg, asw, on_fs_group=lambda p, r: observed.append((p, r)))
    pod = PodRef("uid1", "ns", "p")
    spec = VolumeSpec(name="v", plugin_name=plugin.name, source=None, read_only=read_only)
    vtm = VolumeToMount(plugin.volume_id(spec, pod), pod, "v", spec, plugin.name, False,
                        fs_group=fs_group, fs_group_change_policy=policy)
    root = tmp_path / "uid1" / "v"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    op = gen.mount_volume(vtm, DeviceMountState.NOT_MOUNTED, VolumeMountState.NOT_MOUNTED)
    return plugin, asw, vtm, root, op, observed


def test_walk_after_set_up_is_recorded_and_observed(tmp_path):
    plugin, asw, vtm, root, op, observed = world(tmp_path, FS_GROUP_WALK)
    op.fn()
    assert plugin.seen[0].fs_group == GID, "the plugin's calls see the pod's fsGroup"
    assert vtm.spec.fs_group is None, "the desired state's spec stays pod-independent"
    st = os.stat(root / "sub")
    assert st.st_gid == GID and st.st_mode & stat.S_ISGID
    assert os.stat(root / "sub" / "f").st_gid == GID
    res = asw.fs_group(vtm.volume_id, "uid1")
    assert res is not None and res.mode == FS_GROUP_WALK and res.files_changed == 3 and res.skipped_reason is None
    assert asw.pod_state(vtm.volume_id, "uid1") is VolumeMountState.MOUNTED
    assert observed == [(plugin.name, res)]


@pytest.mark.parametrize("mode,read_only,reason", [
    (FS_GROUP_MOUNT_GROUP, False, "applied by the driver (volume_mount_group): no walk"),
    (FS_GROUP_WALK, True, "read-only volume: never walked"),
    (None, False, "dir volumes do not take an fsGroup"),
])
def test_no_walk_leaves_every_inode_alone(tmp_path, mode, read_only, reason):
    plugin, asw, vtm, root, op, _ = world(tmp_path, mode, read_only=read_only)
    before = os.stat(root / "sub" / "f").st_ctime_ns
    op.fn()
    res = asw.fs_group(vtm.volume_id, "uid1")
    assert res.skipped_reason == reason and res.files == 0
    assert os.stat(root / "sub" / "f").st_ctime_ns == before
    assert os.stat(root / "sub").st_gid != GID


def test_pod_without_fs_group_records_nothing(tmp_path):
    plugin, asw, vtm, root, op, observed = world(tmp_path, FS_GROUP_WALK, fs_group=None)
    op.fn()
    assert plugin.seen[0].fs_group is None
    assert asw.fs_group(vtm.volume_id, "uid1") is None and observed == []
    assert os.stat(root / "sub").st_gid != GID


def test_a_walk_that_fails_is_an_uncertain_mount_error_naming_the_path(tmp_path):
    plugin, asw, vtm, root, op, _ = world(tmp_path, FS_GROUP_WALK)
    (root / "sub" / "f").unlink()
    (root / "sub").rmdir()
    root.rmdir()  # set_up "succeeded" but there is nothing at the mount path
    with pytest.raises(UncertainError) as info:
        op.fn()
    assert info.value.code == "FSGROUP_FAILED" and str(root) in str(info.value)
    assert asw.pod_state(vtm.volume_id, "uid1") is VolumeMountState.UNCERTAIN, "set up: must still be cleaned up"
    result = asw.result(vtm.volume_id, "uid1")
    assert result.operation == SET_VOLUME_OWNERSHIP and result.error is info.value


def test_on_root_mismatch_skips_a_right_root(tmp_path):
    plugin, asw, vtm, root, op, _ = world(tmp_path, FS_GROUP_WALK, policy="OnRootMismatch")
    os.chown(root, -1, GID)
    os.chmod(root, 0o2770)
    op.fn()
    res = asw.fs_group(vtm.volume_id, "uid1")
    assert res.skipped_reason == "OnRootMismatch: root already matches" and res.policy == "OnRootMismatch"
    assert os.stat(root / "sub").st_gid != GID
