"""The mount watcher, with its narrow dependencies: a real mounter and tmpfs mounts in tmp, the
real actual state, a scripted plugin that says which views must be mount points."""

from __future__ import annotations

import os
import subprocess

from mount_utils.mounter import LinuxMounter
from operation_executor.plugin import PluginRegistry
from operation_executor.types import MarkVolumeOpts, PodRef, VolumeSpec
from tests.core.scripted_plugin import ScriptedPlugin
from tests.fixtures_mounts import mount_cleanup, require_root  # noqa: F401 - fixture
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.mount_watcher import MountWatcher

POD = PodRef("0f0e0d0c-0000-4000-8000-0000000000bb", "demo", "web")


class ViewPlugin(ScriptedPlugin):
    def __init__(self) -> None:
        super().__init__(device_mountable=False)

    def pod_dir_is_mount_point(self, spec: VolumeSpec) -> bool:
        return spec.source != "plain"


def test_vanished_mounts_are_marked_uncertain_and_handed_back(mount_cleanup):  # noqa: F811
    require_root()
    plugin = ViewPlugin()
    reg = PluginRegistry()
    reg.register(plugin)
    asw = ActualStateOfWorld()
    paths = {}
    for name, source in (("kept", "disk"), ("gone", "disk"), ("plain", "plain"), ("busy", "disk")):
        spec = VolumeSpec(name=name, plugin_name=plugin.name, source=source)
        paths[name] = str(mount_cleanup / name)
        os.makedirs(paths[name])
        asw.mark_volume_mounted(MarkVolumeOpts(f"v/{name}", POD, name, spec, plugin.name, paths[name], False))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", paths["kept"]], check=True)
    dirty: list[set[str]] = []
    watcher = MountWatcher(LinuxMounter(), str(mount_cleanup), asw, reg,
                           lambda volume_id, pod_uid=None: volume_id == "v/busy", lambda ids: dirty.append(set(ids)))
    try:
        assert watcher.check_once() == {"v/gone"}
        assert dirty == [{"v/gone"}]
        states = {mv.volume_id: mv.state.value for mv in asw.mounted_volumes()}
        assert states["v/gone"] == "uncertain" and states["v/kept"] == states["v/plain"] == "mounted"
    finally:
        watcher.start()  # stop() joins the thread and closes the wake pipe
        watcher.stop()
