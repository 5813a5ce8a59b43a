"""Status without a daemon: the manifests (desired) against the root dir and mountinfo
(actual). Read-only: nothing is mounted, unmounted, created or removed."""

from __future__ import annotations

import os

from mount_utils.mounter import LinuxMounter
from volumemanager import status as st
from volumemanager.manifests.store import ManifestStore
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.populator import EMPTY_DIR, resolve_pod


def offline_status(root_dir: str, manifest_dir: str, node_name: str) -> dict:
    from volumemanager.volume_manager import build_plugins

    mounter = LinuxMounter()
    table = mounter.mount_table()
    host = DaemonPluginHost(root_dir, node_name, mounter)
    plugins = build_plugins(host)
    store = ManifestStore(manifest_dir)
    store.rescan(manifest_dir)
    snap = store.snapshot()
    rows: list[st.VolumeRow] = []
    known: set[str] = set()
    for pod in snap.pods.values():
        dp = resolve_pod(pod, snap, plugins)
        for u in dp.unresolved:
            rows.append(st.VolumeRow(pod=dp.pod.key, pod_uid=dp.pod.uid, volume=u.outer_name, plugin=u.plugin_name,
                                     desired=True, state=st.WAITING, last_error=u.reason, reason=u.reason,
                                     waiting_for=u.waiting_for))
        for vtm in dp.volumes:
            plugin = plugins.find(vtm.plugin_name)
            path = plugin.mount_path(vtm.spec, vtm.pod, vtm.outer_name)
            dmp = plugin.device_mount_path(vtm.spec) if vtm.device_mountable else None
            known.add(path)
            if dmp:
                known.add(dmp)
            mounted = table.is_mount_point(path) or (
                vtm.plugin_name == EMPTY_DIR and getattr(vtm.spec.source, "medium", "") != "Memory" and os.path.isdir(path)
            )
            rows.append(st.VolumeRow(pod=dp.pod.key, pod_uid=dp.pod.uid, volume=vtm.outer_name, plugin=vtm.plugin_name,
                                     desired=True, state=st.MOUNTED if mounted else st.PENDING, mount_path=path,
                                     device_mount_path=dmp if dmp and table.is_mount_point(dmp) else None,
                                     volume_id=vtm.volume_id))
    rows.sort(key=lambda r: (r.pod, r.volume))
    return {
        "node": node_name,
        "source": "disk",
        "note": "no daemon answered: desired state read from the manifest dir, actual state from the root dir "
                "and /proc/self/mountinfo",
        "root_dir": os.path.abspath(root_dir),
        "volumes": [r.to_dict() for r in rows],
        "orphans": st.find_orphans(root_dir, table, known),
        "drivers": [],
        "manifest_errors": [e.to_dict() for e in snap.errors],
    }
