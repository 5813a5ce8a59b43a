"""Hostile manifests through the whole desired-state pipeline (loader -> populator -> plugin
paths): nothing raises, and every path a plugin would touch for a pod lies inside that pod's
own directory (or the plugin's own global dir), so one manifest can never reach another pod."""

from __future__ import annotations

import os

import yaml
from hypothesis import given, strategies as st

from mount_utils.mounter import FakeMounter
from tests.manifests.test_hostile import BASE_DOCS, SETTINGS, _paths, _replace, json_values
from volumemanager.manifests.loader import load_bytes
from volumemanager.manifests.models import PersistentVolume, PersistentVolumeClaim, Pod, Secret, Snapshot
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.populator import resolve_pod
from volumemanager.plugins import build_plugins

ROOT = "/nonexistent/vm-root"
PLUGINS = build_plugins(DaemonPluginHost(ROOT, "n", FakeMounter()))


def _snapshot(objects) -> Snapshot:
    snap = Snapshot.empty()
    for o in objects:
        if isinstance(o, Pod):
            snap.pods[o.uid] = o
        elif isinstance(o, PersistentVolume):
            snap.pvs[o.name] = o
        elif isinstance(o, PersistentVolumeClaim):
            snap.pvcs[(o.namespace, o.name)] = o
        elif isinstance(o, Secret):
            snap.secrets[(o.namespace, o.name)] = o
    return snap


def _inside(path: str, prefix: str) -> bool:
    norm = os.path.normpath(path)
    return norm == path and norm.startswith(prefix.rstrip("/") + "/")


@SETTINGS
@given(st.data())
def test_mutated_manifests_resolve_only_to_paths_of_their_own_pod(data):
    docs = [dict(d) for d in BASE_DOCS]
    i = data.draw(st.integers(0, len(docs) - 1))
    path = data.draw(st.sampled_from(list(_paths(docs[i]))))
    docs[i] = _replace(docs[i], path, data.draw(json_values))
    result = load_bytes(yaml.safe_dump_all(docs).encode(), "f.yaml")
    snap = _snapshot(result.objects)
    for pod in snap.pods.values():
        dp = resolve_pod(pod, snap, PLUGINS)
        for vtm in dp.volumes:
            plugin = PLUGINS.find(vtm.plugin_name)
            assert _inside(plugin.mount_path(vtm.spec, vtm.pod, vtm.outer_name), f"{ROOT}/pods/{pod.uid}")
            if vtm.device_mountable:
                dmp = plugin.device_mount_path(vtm.spec)
                assert dmp is None or _inside(dmp, f"{ROOT}/plugins/")
