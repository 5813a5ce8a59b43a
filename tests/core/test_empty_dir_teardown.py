"""emptyDir teardown deletes a disk scratch dir only once it has proven nobody uses it."""

from __future__ import annotations

import os

import pytest

from mount_utils.mounter import LinuxMounter
from operation_executor.errors import UncertainError
from operation_executor.types import PodRef, VolumeSpec
from volumemanager.manifests.models import EmptyDirSource
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import empty_dir
from volumemanager.plugins.empty_dir import EmptyDirPlugin

POD = PodRef("0f0e0d0c-0000-4000-8000-000000000001", "demo", "scratch")


def _set_up(tmp_path) -> tuple[EmptyDirPlugin, VolumeSpec, str]:
    (tmp_path / "root").mkdir()
    plugin = EmptyDirPlugin(DaemonPluginHost(str(tmp_path / "root"), "testnode", LinuxMounter()))
    spec = VolumeSpec(name="cache", plugin_name=plugin.name, source=EmptyDirSource("", None))
    plugin.set_up(spec, POD, "cache", None)
    path = plugin.mount_path(spec, POD, "cache")
    with open(os.path.join(path, "data"), "w") as f:
        f.write("keep me")
    return plugin, spec, path


def test_an_unfinished_look_for_users_deletes_nothing(tmp_path, monkeypatch):
    """A scan stopped by its deadline proves nothing: the data stays and the error says why."""
    plugin, spec, path = _set_up(tmp_path)
    monkeypatch.setattr(empty_dir, "HOLDER_SCAN_DEADLINE_SECONDS", -1.0)
    with pytest.raises(UncertainError) as info:
        plugin.tear_down(spec, POD, "cache", path)
    assert info.value.code == "BUSY"
    assert "before it could prove nobody does" in str(info.value)
    with open(os.path.join(path, "data")) as f:
        assert f.read() == "keep me"


def test_a_finished_look_with_no_users_deletes_the_dir_and_its_pod_skeleton(tmp_path):
    plugin, spec, path = _set_up(tmp_path)
    plugin.tear_down(spec, POD, "cache", path)
    assert not os.path.exists(path)
    assert os.listdir(tmp_path / "root" / "pods") == []
