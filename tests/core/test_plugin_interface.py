"""The plugin interface's knowledge questions, asked of the built-in plugins: which source each
serves, what they call their operations, how they show in tables. No mounts."""

from __future__ import annotations

import pytest

from mount_utils.mounter import FakeMounter
from operation_executor.types import VolumeSpec
from volumemanager.manifests import models as m
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins

PLUGINS = build_plugins(DaemonPluginHost("/nonexistent/vm-root", "n", FakeMounter()))


@pytest.mark.parametrize("source, short", [
    (m.EmptyDirSource("", None), "empty-dir"),
    (m.EmptyDirSource("Memory", None), "empty-dir"),
    (m.CSISource(driver="d", volume_handle="h", fs_type=None, volume_attributes={}, read_only=False), "csi"),
])
def test_each_source_has_exactly_one_plugin(source, short):
    plugin = PLUGINS.find_for_source(source)
    assert plugin is not None and plugin.display_name == short


def test_a_source_no_plugin_serves_has_none():
    assert PLUGINS.find_for_source(object()) is None


def test_memory_emptydir_alone_must_be_a_mount_point():
    plugin = PLUGINS.find_for_source(m.EmptyDirSource("", None))
    disk = VolumeSpec(name="a", plugin_name=plugin.name, source=m.EmptyDirSource("", None))
    mem = VolumeSpec(name="b", plugin_name=plugin.name, source=m.EmptyDirSource("Memory", None))
    assert not plugin.pod_dir_is_mount_point(disk) and plugin.pod_dir_is_mount_point(mem)


def test_operation_labels_are_the_plugins():
    csi = PLUGINS.find_for_source(m.CSISource(driver="d", volume_handle="h", fs_type=None,
                                              volume_attributes={}, read_only=False))
    assert PLUGINS.operation_label(csi.name, "MountDevice") == "NodeStageVolume"
    assert PLUGINS.operation_label(PLUGINS.find_for_source(m.EmptyDirSource("", None)).name, "SetUp") == "SetUp"
    assert PLUGINS.operation_label(None, "TearDown") == "TearDown"
