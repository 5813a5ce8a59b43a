"""The FlexVolume plugin's on-disk knowledge, without a daemon: which pod dirs are its (named
after the driver), what a restart rebuilds from them, and ids that do not change when a driver
goes. Real drivers (the shell scripts), a real prober, no mounts."""

from __future__ import annotations

import shutil
from pathlib import Path

from mount_utils.mounter import LinuxMounter
from operation_executor.types import PodRef, VolumeSpec
from volumemanager.manifests.models import FlexVolumeSource
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins
from volumemanager.plugins.flexvolume import PLUGIN_NAME
from volumemanager.plugins.flexvolume_driver import FlexProber
from tests.plugins_flex.drivers import LOOPDISK, TMPFS, install_driver

POD = PodRef("uid-1", "demo", "app")


def _spec(driver: str, name: str = "vol") -> VolumeSpec:
    return VolumeSpec(name=name, plugin_name=PLUGIN_NAME,
                      source=FlexVolumeSource(driver=driver, fs_type=None, secret_ref=None, read_only=False, options={}))


def _setup(tmp_path: Path, flex_dirs):
    plugin_dir, work_dir = flex_dirs
    root = tmp_path / "root"
    root.mkdir()
    prober = FlexProber(str(plugin_dir))
    reg = build_plugins(DaemonPluginHost(str(root), "node-a", LinuxMounter()), flex_drivers=prober)
    return plugin_dir, work_dir, root, prober, reg


def test_pod_dirs_named_after_known_drivers_belong_to_flexvolume(tmp_path, flex_dirs):
    plugin_dir, work_dir, root, prober, reg = _setup(tmp_path, flex_dirs)
    flex = reg.find(PLUGIN_NAME)
    assert reg.find_for_pod_dir("kubernetes.io~empty-dir").name == "kubernetes.io/empty-dir"
    assert reg.find_for_pod_dir("test~tmpfs") is None  # not installed: left alone
    install_driver(plugin_dir, TMPFS, work_dir)
    prober.probe()
    assert reg.find_for_pod_dir("test~tmpfs") is flex
    assert reg.find_for_pod_dir("other~unknown") is None
    # The kubelet's layout: pods/<uid>/volumes/<vendor>~<driver>/<name>.
    assert flex.mount_path(_spec(TMPFS), POD, "scratch") == str(root / "pods/uid-1/volumes/test~tmpfs/vol")
    spec = flex.construct_volume_spec("vol", str(root / "pods/uid-1/volumes/test~tmpfs/vol"))
    assert spec.source.driver == TMPFS and spec.plugin_name == PLUGIN_NAME
    assert flex.display_name == "flexvolume"
    assert reg.operation_label(PLUGIN_NAME, "SetUp") == "mount"


def test_attachable_ids_and_paths_survive_the_driver_going(tmp_path, flex_dirs):
    plugin_dir, work_dir, root, prober, reg = _setup(tmp_path, flex_dirs)
    flex = reg.find(PLUGIN_NAME)
    drv = install_driver(plugin_dir, LOOPDISK, work_dir)
    tmpfs = install_driver(plugin_dir, TMPFS, work_dir)
    prober.probe()
    spec = _spec(LOOPDISK, "pv1")
    assert flex.is_device_mountable(spec) and not flex.is_device_mountable(_spec(TMPFS))
    vid, dmp = flex.volume_id(spec, POD), flex.device_mount_path(spec)
    assert dmp == str(root / "plugins/kubernetes.io/flexvolume/test/loopdisk/mounts/pv1")
    assert "uid-1" not in vid and "uid-1" in flex.volume_id(_spec(TMPFS), POD)
    shutil.rmtree(drv.dir)
    shutil.rmtree(tmpfs.dir)
    prober.probe()
    assert prober.get(LOOPDISK) is None
    assert flex.volume_id(spec, POD) == vid and flex.device_mount_path(spec) == dmp
    assert not flex.is_device_mountable(_spec(TMPFS))


def test_a_restart_finds_staged_devices_by_the_layout(tmp_path, flex_dirs):
    plugin_dir, work_dir, root, prober, reg = _setup(tmp_path, flex_dirs)
    flex = reg.find(PLUGIN_NAME)
    (root / "plugins/kubernetes.io/flexvolume/test/loopdisk/mounts/pv1").mkdir(parents=True)
    (root / "plugins/kubernetes.io/flexvolume/solo/mounts/pv2").mkdir(parents=True)
    staged = sorted(flex.find_staged_devices(), key=lambda s: s.device_mount_path)
    assert [(s.spec.source.driver, s.spec.name) for s in staged] == [("solo", "pv2"), (LOOPDISK, "pv1")]
    # Never installed in this run, but its mounts/ dir says it was attachable: the same id and
    # path as a desired volume of it would get, so reconstruction matches them up.
    assert flex.is_device_mountable(_spec(LOOPDISK, "pv1"))
    assert staged[1].volume_id == flex.volume_id(_spec(LOOPDISK, "pv1"), POD)
    assert staged[1].device_mount_path == flex.device_mount_path(_spec(LOOPDISK, "pv1"))
    assert reg.find_for_pod_dir("test~loopdisk") is flex


def test_fs_group_is_walked_by_default_and_passed_to_mount(tmp_path, flex_dirs):
    """The kubelet's defaults: init capabilities say fsGroup true unless the driver says
    otherwise, and ``mount`` gets the group as ``kubernetes.io/mounterArgs.FsGroup``."""
    from dataclasses import replace

    from operation_executor.plugin import FS_GROUP_WALK

    plugin_dir, work_dir, root, prober, reg = _setup(tmp_path, flex_dirs)
    flex = reg.find(PLUGIN_NAME)
    install_driver(plugin_dir, TMPFS, work_dir)
    prober.probe()
    spec = replace(_spec(TMPFS), fs_group=2345)
    assert flex.fs_group_mode(spec) == FS_GROUP_WALK
    assert flex._options(spec, POD)["kubernetes.io/mounterArgs.FsGroup"] == "2345"
    assert "kubernetes.io/mounterArgs.FsGroup" not in flex._options(spec)  # only mount gets it
