"""Reconstruction is plugin-agnostic: a scripted plugin with its own on-disk rules, on a real
root dir in tmp, with real tmpfs mounts where mount state matters."""

from __future__ import annotations

import os
import subprocess

import pytest

from mount_utils.mountinfo import MountTable
from operation_executor.plugin import PluginRegistry, StagedDevice
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import PodRef, VolumeSpec, VolumeToMount
from tests.core.scripted_plugin import ScriptedPlugin
from tests.fixtures_mounts import mount_cleanup, require_root  # noqa: F401 - fixture
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.plugin_host import DaemonPluginHost, escape_plugin_name
from volumemanager.reconstruct import reconstruct_actual_state

UID = "0f0e0d0c-0000-4000-8000-0000000000aa"
POD = PodRef(UID, "demo", "web")
PLAIN = "plain"  # a source whose pod view is a plain directory, not a mount point


class DiskPlugin(ScriptedPlugin):
    """Pod views at ``<volume dir>/view``; stages at ``<plugin dir>/staged/<name>``; a spec is
    saved as ``<volume dir>/saved`` holding the source."""

    def __init__(self, host: DaemonPluginHost) -> None:
        super().__init__(device_mountable=True)
        self.host = host

    def is_device_mountable(self, spec: VolumeSpec) -> bool:
        return spec.source is not None and spec.source != PLAIN

    def mount_path(self, spec, pod, outer_name) -> str:
        return self.pod_mount_path_on_disk(self.host.pod_volume_dir(pod.uid, self.name, outer_name), False)

    def device_mount_path(self, spec) -> str | None:
        return os.path.join(self.host.plugin_dir(self.name), "staged", spec.name) if self.is_device_mountable(spec) else None

    def pod_mount_path_on_disk(self, volume_dir: str, block: bool) -> str:
        return volume_dir if block else os.path.join(volume_dir, "view")

    def construct_volume_spec(self, volume_name: str, volume_dir: str) -> VolumeSpec | None:
        try:
            with open(os.path.join(volume_dir, "saved")) as f:
                return VolumeSpec(name=volume_name, plugin_name=self.name, source=f.read())
        except FileNotFoundError:
            return None

    def find_staged_devices(self):
        staged = os.path.join(self.host.plugin_dir(self.name), "staged")
        for name in sorted(os.listdir(staged)) if os.path.isdir(staged) else ():
            spec = VolumeSpec(name=name, plugin_name=self.name, source="disk")
            yield StagedDevice(self.volume_id(spec, None), os.path.join(staged, name), spec)

    def pod_dir_is_mount_point(self, spec: VolumeSpec) -> bool:
        return spec.source != PLAIN


@pytest.fixture
def env(mount_cleanup):  # noqa: F811
    root = mount_cleanup / "root"
    root.mkdir()
    host = DaemonPluginHost(str(root), "n", None)
    plugin = DiskPlugin(host)
    reg = PluginRegistry()
    reg.register(plugin)
    return host, plugin, reg, ActualStateOfWorld()


def _tmpfs(path: str) -> None:
    require_root()
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", path], check=True)


def _vol_dir(host: DaemonPluginHost, name: str, uid: str = UID) -> str:
    d = os.path.join(host.pods_dir, uid, "volumes", escape_plugin_name(DiskPlugin.name), name)
    os.makedirs(d, exist_ok=True)
    return d


def _desired(plugin: DiskPlugin, name: str, source: str) -> VolumeToMount:
    spec = VolumeSpec(name=name, plugin_name=plugin.name, source=source)
    return VolumeToMount(plugin.volume_id(spec, POD), POD, name, spec, plugin.name, plugin.is_device_mountable(spec))


def _run(host, reg, asw, desired=(), owners=None):
    return reconstruct_actual_state(host.pods_dir, reg, MountTable.read(), desired, asw,
                                    (owners or {}).get)


def test_desired_and_mounted_is_adopted_with_its_stage(env):
    host, plugin, reg, asw = env
    vtm = _desired(plugin, "data", "disk")
    _tmpfs(os.path.join(_vol_dir(host, "data"), "view"))
    _tmpfs(plugin.device_mount_path(vtm.spec))
    found = _run(host, reg, asw, [vtm])
    assert (found.adopted, found.uncertain, found.devices) == (1, 0, 0)
    [mv] = asw.mounted_volumes()
    assert mv.state is VolumeMountState.MOUNTED and mv.mount_path.endswith("/data/view")
    assert asw.get_volume(vtm.volume_id).device_state is DeviceMountState.MOUNTED


def test_desired_but_not_a_mount_point_is_not_adopted(env):
    host, plugin, reg, asw = env
    os.makedirs(os.path.join(_vol_dir(host, "data"), "view"))
    found = _run(host, reg, asw, [_desired(plugin, "data", "disk")])
    assert found.adopted == 0 and asw.mounted_volumes() == []


def test_plain_directory_volume_counts_as_present_without_a_mount(env):
    host, plugin, reg, asw = env
    os.makedirs(os.path.join(_vol_dir(host, "scratch"), "view"))
    found = _run(host, reg, asw, [_desired(plugin, "scratch", PLAIN)])
    assert found.adopted == 1


def test_undesired_volume_is_uncertain_with_the_plugins_rebuilt_spec_and_recorded_owner(env):
    host, plugin, reg, asw = env
    d = _vol_dir(host, "old")
    with open(os.path.join(d, "saved"), "w") as f:
        f.write("disk")
    found = _run(host, reg, asw, owners={UID: "demo/web"})
    assert (found.uncertain, found.cleanup_pods) == (1, {UID})
    [mv] = asw.mounted_volumes()
    assert mv.state is VolumeMountState.UNCERTAIN and mv.spec.source == "disk"
    assert mv.pod == POD and mv.mount_path == os.path.join(d, "view")
    assert mv.device_mount_path == plugin.device_mount_path(mv.spec)


def test_undesired_without_saved_spec_is_kept_only_when_mounted(env):
    host, plugin, reg, asw = env
    _vol_dir(host, "gone")
    _tmpfs(os.path.join(_vol_dir(host, "live"), "view"))
    found = _run(host, reg, asw)
    assert found.uncertain == 1
    [mv] = asw.mounted_volumes()
    assert mv.outer_name == "live" and mv.spec.source is None and mv.pod == PodRef(UID, "?", UID)
    assert mv.volume_id == f"{plugin.name}/{UID}-live"


def test_unknown_plugin_dirs_are_left_alone(env):
    host, plugin, reg, asw = env
    d = os.path.join(host.pods_dir, UID, "volumes", "other~thing", "x")
    os.makedirs(d)
    found = _run(host, reg, asw)
    assert found.counts() == {"adopted": 0, "uncertain": 0, "devices": 0} and os.path.isdir(d)


def test_staged_devices_without_pods_are_found_through_the_plugin(env):
    host, plugin, reg, asw = env
    staged = os.path.join(host.plugin_dir(plugin.name), "staged")
    _tmpfs(os.path.join(staged, "left"))
    os.makedirs(os.path.join(staged, "unmounted"))
    found = _run(host, reg, asw)
    assert found.devices == 1
    [av] = asw.attached_volumes()
    assert av.device_mount_path == os.path.join(staged, "left") and av.device_state is DeviceMountState.UNCERTAIN
