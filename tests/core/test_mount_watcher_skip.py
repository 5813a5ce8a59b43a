"""The mount watcher's check walks every volume the actual state holds (tens of ms at 10,000
volumes), and the mount table changes with every mount on the node. Issue 16: changes to
other mounts (here: a tmpfs mounted and unmounted next to the root dir, again and again) are
read but not checked while neither our lines of the table nor the actual state changed; a
mount of ours that vanishes is still noticed and handed back. Real tmpfs mounts in tmp."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from mount_utils.mounter import LinuxMounter
from operation_executor.plugin import PluginRegistry
from operation_executor.types import MarkVolumeOpts, PodRef, VolumeSpec
from tests.core.scripted_plugin import ScriptedPlugin
from tests.daemon_harness import wait_until
from tests.fixtures_mounts import mount_cleanup, require_root  # noqa: F401 - fixture
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.mount_watcher import MountWatcher

pytestmark = pytest.mark.timeout(60)

POD = PodRef("0f0e0d0c-0000-4000-8000-0000000000cc", "demo", "churn")


class ViewPlugin(ScriptedPlugin):
    def __init__(self) -> None:
        super().__init__(device_mountable=False)

    def pod_dir_is_mount_point(self, spec: VolumeSpec) -> bool:
        return True


def test_foreign_mount_churn_is_not_checked_and_a_vanished_mount_still_is(mount_cleanup):  # noqa: F811
    require_root()
    plugin = ViewPlugin()
    reg = PluginRegistry()
    reg.register(plugin)
    asw = ActualStateOfWorld()
    root = mount_cleanup / "root"
    other = mount_cleanup / "other"  # outside the root dir: someone else's mount
    other.mkdir()
    paths = []
    for i in range(3):
        path = root / f"v{i}"
        os.makedirs(path)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], check=True)
        spec = VolumeSpec(name=f"v{i}", plugin_name=plugin.name, source="disk")
        asw.mark_volume_mounted(MarkVolumeOpts(f"v/{i}", POD, f"v{i}", spec, plugin.name, str(path), False))
        paths.append(path)
    dirty: list[set[str]] = []
    watcher = MountWatcher(LinuxMounter(), str(root), asw, reg, lambda *_a: False, lambda ids: dirty.append(set(ids)))
    watcher.start()
    try:
        # The first change is checked (nothing seen yet) and finds everything in place.
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
        wait_until(lambda: watcher.checks + watcher.skipped >= 1, 10, what="the first read")
        checks = watcher.checks
        assert dirty == []
        # Churn outside the root dir for a few seconds: read, never checked again.
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            subprocess.run(["umount", str(other)], check=True)
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
            time.sleep(0.2)
        wait_until(lambda: watcher.skipped >= 2, 10, what="reads of foreign changes")
        assert watcher.checks == checks
        # One of ours vanishes behind our back: checked, marked uncertain, handed back.
        subprocess.run(["umount", str(paths[1])], check=True)
        wait_until(lambda: dirty, 10, what="the vanished mount handed back")
        assert dirty == [{"v/1"}]
        assert asw.pod_state("v/1", POD.uid).value == "uncertain"
        assert watcher.checks == checks + 1
    finally:
        watcher.stop()
