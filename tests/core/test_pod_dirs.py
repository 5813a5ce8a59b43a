"""pod_dirs: only empty layout directories go; data, mount points and desired pods stay."""

from __future__ import annotations

import os

from mount_utils.mounter import LinuxMounter
from tests.fixtures_mounts import mount_cleanup  # noqa: F401 - pytest fixture
from volumemanager.pod_dirs import remove_pod_skeleton, sweep_pod_skeletons


def _is_mount_point(path: str) -> bool:
    return LinuxMounter().is_mount_point(path)


def _view_below_mount(plugin_dir_name: str, volume_dir: str, block: bool) -> str:
    """A plugin that keeps the pod's view in ``<volume dir>/mount`` (as CSI does)."""
    return os.path.join(volume_dir, "mount") if plugin_dir_name == "example.com~staged" else volume_dir


def test_empty_skeleton_goes_whole(tmp_path):
    pods = tmp_path / "pods"
    for rel in ("u1/volumes/kubernetes.io~local-volume", "u1/volumeDevices/kubernetes.io~local-volume/pv",
                "u1/volumes/example.com~staged/pvc-1/mount"):
        (pods / rel).mkdir(parents=True)
    assert remove_pod_skeleton(str(pods), "u1", _is_mount_point, _view_below_mount)
    assert pods.is_dir() and not (pods / "u1").exists()


def test_a_view_dir_below_the_volume_dir_is_entered_only_when_its_plugin_says_so(tmp_path):
    pods = tmp_path / "pods"
    (pods / "u1/volumes/example.com~other/pvc-1/mount").mkdir(parents=True)
    assert not remove_pod_skeleton(str(pods), "u1", _is_mount_point, _view_below_mount)
    assert (pods / "u1/volumes/example.com~other/pvc-1/mount").is_dir()


def test_anything_with_content_stays(tmp_path):
    pods = tmp_path / "pods"
    data = pods / "u1" / "volumes" / "kubernetes.io~empty-dir" / "scratch"
    (data / "empty-subdir").mkdir(parents=True)  # inside a volume: never entered
    (pods / "u1" / "volumes" / "x").mkdir()
    (pods / "u1" / "etc-hosts").write_text("")
    assert not remove_pod_skeleton(str(pods), "u1", _is_mount_point)
    assert (data / "empty-subdir").is_dir()
    assert not (pods / "u1" / "volumes" / "x").exists()
    assert (pods / "u1" / "etc-hosts").exists()


def test_a_mount_point_is_never_removed(mount_cleanup):
    pods = mount_cleanup / "pods"
    mnt = pods / "u1" / "volumes" / "kubernetes.io~empty-dir" / "mem"
    mnt.mkdir(parents=True)
    mounter = LinuxMounter()
    mounter.mount_tmpfs(str(mnt), size_bytes=1 << 20)
    try:
        assert not remove_pod_skeleton(str(pods), "u1", _is_mount_point)
        assert mounter.is_mount_point(str(mnt))
        # Even when the caller's check misses it, rmdir refuses a mount point (EBUSY).
        assert not remove_pod_skeleton(str(pods), "u1", lambda p: False)
        assert mounter.is_mount_point(str(mnt))
    finally:
        mounter.unmount(str(mnt))


def test_symlinks_and_bad_uids_are_not_followed(tmp_path):
    pods = tmp_path / "pods"
    pods.mkdir()
    outside = tmp_path / "outside" / "volumes" / "x"
    outside.mkdir(parents=True)
    os.symlink(tmp_path / "outside", pods / "u1")
    assert not remove_pod_skeleton(str(pods), "u1", _is_mount_point)
    assert outside.is_dir()
    for bad in ("", ".", "..", "a/b"):
        assert not remove_pod_skeleton(str(pods), bad, _is_mount_point)


def test_sweep_keeps_desired_pods(tmp_path):
    pods = tmp_path / "pods"
    for uid in ("gone", "desired"):
        (pods / uid / "volumes" / "kubernetes.io~host-path").mkdir(parents=True)
    assert sweep_pod_skeletons(str(pods), lambda uid: uid == "desired", _is_mount_point) == 1
    assert sorted(os.listdir(pods)) == ["desired"]
    assert sweep_pod_skeletons(str(tmp_path / "missing"), lambda uid: False, _is_mount_point) == 0
