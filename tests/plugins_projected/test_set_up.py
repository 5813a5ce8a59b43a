"""set_up/tear_down of the four plugins on real mounts: the ..data layout, modes, a tmpfs for
secret and projected, an update that swaps content, no write when nothing changed, a missing
object that touches nothing, and a clean tear-down."""

from __future__ import annotations

import os
import stat

import pytest

from mount_utils.mounter import LinuxMounter
from mount_utils.mountinfo import read_mountinfo
from operation_executor.errors import WaitingError
from operation_executor.types import PodInfo, PodRef, VolumeSpec
from tests.fixtures_mounts import assert_no_mounts_under, require_root, unmount_all_under
from volumemanager.manifests import models as m
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins

POD = PodRef("0f0e0d0c-0000-4000-8000-0000000000aa", "demo", "web")
INFO = PodInfo(uid=POD.uid, namespace="demo", name="web", labels={"app": "web"})


@pytest.fixture
def env(tmp_path):
    require_root()
    root = tmp_path / "root"
    root.mkdir()
    host = DaemonPluginHost(str(root), "node", LinuxMounter())
    objs = {"configmap": {}, "secret": {}}
    host.set_secret_lookup(lambda ref: objs["secret"].get((ref.namespace, ref.name)))
    host.set_configmap_lookup(lambda ref: objs["configmap"].get((ref.namespace, ref.name)))
    yield host, build_plugins(host), objs
    unmount_all_under(root)
    assert_no_mounts_under(root)


def _spec(plugin, source):
    return VolumeSpec(name="v", plugin_name=plugin.name, source=source,
                      pod_info=INFO if plugin.uses_pod_info else None)


def _fstype(path):
    for mi in read_mountinfo():
        if mi.mount_point == os.path.realpath(path):
            return mi.fs_type
    return None


def test_secret_on_tmpfs_with_layout_modes_update_and_teardown(env):
    host, plugins, objs = env
    plugin = plugins.find("kubernetes.io/secret")
    objs["secret"][("demo", "s")] = {"user": b"admin", "pass": b"hunter2"}
    spec = _spec(plugin, m.SecretVolumeSource("s", (m.KeyToPath("pass", "creds/pass", 0o400),
                                                    m.KeyToPath("user", "user", None)), 0o440, False))
    plugin.set_up(spec, POD, "creds", None)
    path = plugin.mount_path(spec, POD, "creds")
    assert path.endswith("pods/%s/volumes/kubernetes.io~secret/creds" % POD.uid)
    assert _fstype(path) == "tmpfs"
    assert os.readlink(os.path.join(path, "user")) == "..data/user"
    assert os.readlink(os.path.join(path, "creds")) == "..data/creds"
    assert os.readlink(os.path.join(path, "..data")).startswith("..")
    with open(os.path.join(path, "creds/pass"), "rb") as f:
        assert f.read() == b"hunter2"
    assert stat.S_IMODE(os.stat(os.path.join(path, "creds/pass")).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(os.path.join(path, "user")).st_mode) == 0o440

    version = os.readlink(os.path.join(path, "..data"))
    plugin.set_up(spec, POD, "creds", None)  # unchanged: nothing written
    assert os.readlink(os.path.join(path, "..data")) == version

    objs["secret"][("demo", "s")] = {"user": b"root", "pass": b"hunter3"}
    plugin.set_up(spec, POD, "creds", None)
    assert os.readlink(os.path.join(path, "..data")) != version
    with open(os.path.join(path, "user"), "rb") as f:
        assert f.read() == b"root"

    plugin.tear_down(spec, POD, "creds", path)
    assert not os.path.exists(path)
    assert not os.path.exists(host.pod_dir(POD.uid))


def test_configmap_on_disk_removed_key_goes_and_missing_object_touches_nothing(env):
    host, plugins, objs = env
    plugin = plugins.find("kubernetes.io/configmap")
    spec = _spec(plugin, m.ConfigMapVolumeSource("cfg", (), 0o644, False))
    with pytest.raises(WaitingError) as info:
        plugin.set_up(spec, POD, "cfg", None)
    assert info.value.waiting_for == "configmap demo/cfg"
    assert not os.path.exists(host.pod_dir(POD.uid))

    objs["configmap"][("demo", "cfg")] = {"a": b"1", "b": b"2"}
    plugin.set_up(spec, POD, "cfg", None)
    path = plugin.mount_path(spec, POD, "cfg")
    assert _fstype(path) != "tmpfs"
    assert sorted(n for n in os.listdir(path) if not n.startswith("..")) == ["a", "b"]
    objs["configmap"][("demo", "cfg")] = {"a": b"1"}
    plugin.set_up(spec, POD, "cfg", None)
    assert sorted(n for n in os.listdir(path) if not n.startswith("..")) == ["a"]
    plugin.tear_down(spec, POD, "cfg", path)
    assert not os.path.exists(path)


def test_downward_and_projected(env):
    host, plugins, objs = env
    dw = plugins.find("kubernetes.io/downward-api")
    spec = _spec(dw, m.DownwardAPISource((m.DownwardAPIVolumeFile("labels", m.ObjectFieldSelector(
        "metadata.labels"), None, None),), 0o644))
    dw.set_up(spec, POD, "info", None)
    path = dw.mount_path(spec, POD, "info")
    with open(os.path.join(path, "labels")) as f:
        assert f.read() == 'app="web"'

    pj = plugins.find("kubernetes.io/projected")
    objs["secret"][("demo", "s")] = {"k": b"v"}
    pspec = _spec(pj, m.ProjectedSource((m.SecretProjection("s", (), False), m.DownwardAPIProjection(
        (m.DownwardAPIVolumeFile("name", m.ObjectFieldSelector("metadata.name"), None, None),))), 0o600))
    pj.set_up(pspec, POD, "all", None)
    ppath = pj.mount_path(pspec, POD, "all")
    assert _fstype(ppath) == "tmpfs"
    assert sorted(n for n in os.listdir(ppath) if not n.startswith("..")) == ["k", "name"]
    assert stat.S_IMODE(os.stat(os.path.join(ppath, "name")).st_mode) == 0o600
    pj.tear_down(pspec, POD, "all", ppath)
    dw.tear_down(spec, POD, "info", path)
    assert not os.path.exists(host.pod_dir(POD.uid))


def test_reconstructed_spec_tears_down_a_tmpfs(env):
    host, plugins, objs = env
    plugin = plugins.find("kubernetes.io/secret")
    objs["secret"][("demo", "s")] = {"k": b"v"}
    spec = _spec(plugin, m.SecretVolumeSource("s", (), 0o644, False))
    plugin.set_up(spec, POD, "s", None)
    path = plugin.mount_path(spec, POD, "s")
    rebuilt = plugin.construct_volume_spec("s", path)
    assert plugin.content_generation(rebuilt, POD, host) is None
    plugin.tear_down(rebuilt, POD, "s", path)
    assert not os.path.exists(path)


def test_with_fs_group_a_second_set_up_after_the_walk_writes_nothing(env):
    """The files are written with the read-only group bits the fsGroup walk adds to these
    views (the kubelet's roMask: a pod only reads them), so the walk changes only their group
    and the next set_up of the same content compares equal."""
    from dataclasses import replace

    from mount_utils.ownership import set_volume_ownership

    host, plugins, objs = env
    plugin = plugins.find("kubernetes.io/configmap")
    objs["configmap"][("demo", "cfg")] = {"a": b"1"}
    spec = replace(_spec(plugin, m.ConfigMapVolumeSource("cfg", (), 0o644, False)), fs_group=4321)
    plugin.set_up(spec, POD, "cfg", None)
    path = plugin.mount_path(spec, POD, "cfg")
    assert set_volume_ownership(path, 4321, read_only=plugin.fs_group_read_only_bits).complete
    st = os.stat(os.path.join(path, "a"))
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 0o644)
    version = os.readlink(os.path.join(path, "..data"))
    plugin.set_up(spec, POD, "cfg", None)
    assert os.readlink(os.path.join(path, "..data")) == version
    plugin.tear_down(spec, POD, "cfg", path)
