"""Status without a daemon: the manifests (desired) against the root dir and mountinfo
(actual). Read-only: nothing is mounted, unmounted, created or removed."""

from __future__ import annotations

import os
from socket import gethostname

from mount_utils.mounter import LinuxMounter
from volumemanager import status as st
from volumemanager.manifests.store import ManifestStore
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.populator import resolve_pod


# What the disk cannot tell: it lives only in a running daemon's memory.
UNKNOWN_WITHOUT_DAEMON = [
    "operations in flight",
    "last errors and retry times",
    "CSI driver registrations",
    "uncertain (half-done) mounts and unmounts",
    "volumes whose desired state the daemon kept from a manifest file that no longer parses",
]


def _settings(root_dir: str, manifest_dir: str | None, node_name: str | None) -> tuple[str, str, dict, list[str]]:
    """(manifest dir, node name, record summary, notes): a flag wins, then the daemon's
    record, then the defaults; the notes say which was used and why."""
    from volumemanager.config import DEFAULT_MANIFEST_DIR
    from volumemanager.daemon_record import RecordError, pid_alive, read_record, record_path

    notes: list[str] = []
    summary: dict = {"path": record_path(root_dir)}
    try:
        record = read_record(root_dir)
    except RecordError as e:
        record = None
        summary["error"] = str(e)
        notes.append(str(e))
    if record is None:
        summary["found"] = False
        if "error" not in summary:
            notes.append(f"no record of a daemon under {os.path.abspath(root_dir)} "
                         f"({summary['path']} does not exist)")
    else:
        summary.update(found=True, **{k: record.get(k) for k in (
            "pid", "started_at", "stopped_at", "written_at", "version", "manifest_dir", "sources", "node_name",
            "socket", "plugins_registry_dir")})
        if record.get("stopped_at"):
            notes.append(f"the daemon (pid {record.get('pid')}) recorded a clean stop")
        elif pid_alive(record.get("pid")):
            notes.append(f"the daemon recorded pid {record.get('pid')}, which exists but did not answer")
        else:
            notes.append(f"the daemon (pid {record.get('pid')}) ended without a clean stop")
    recorded = record or {}
    if manifest_dir:
        used_manifest_dir = manifest_dir
        if recorded.get("manifest_dir") and os.path.abspath(manifest_dir) != recorded["manifest_dir"]:
            notes.append(f"--manifest-dir {manifest_dir} differs from the daemon's {recorded['manifest_dir']}")
    elif recorded.get("manifest_dir"):
        used_manifest_dir = recorded["manifest_dir"]
    else:
        used_manifest_dir = DEFAULT_MANIFEST_DIR
        notes.append(f"desired state read from the default manifest dir {DEFAULT_MANIFEST_DIR}")
    used_node = node_name or recorded.get("node_name") or gethostname()
    return used_manifest_dir, used_node, summary, notes


def _read_desired(manifest_dir: str, plugins, table) -> tuple[list[st.VolumeRow], set[str], list[dict]]:
    """(rows, mount paths the desired volumes use, manifest errors) of one manifest dir."""
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
            mounted = plugin.is_present_on_disk(vtm.spec, path, table.is_mount_point(path))
            rows.append(st.VolumeRow(pod=dp.pod.key, pod_uid=dp.pod.uid, volume=vtm.outer_name, plugin=vtm.plugin_name,
                                     desired=True, state=st.MOUNTED if mounted else st.PENDING, mount_path=path,
                                     device_mount_path=dmp if dmp and table.is_mount_point(dmp) else None,
                                     volume_id=vtm.volume_id))
    return rows, known, [e.to_dict() for e in snap.errors]


def offline_status(root_dir: str, manifest_dir: str | None = None, node_name: str | None = None,
                   why: str = "no daemon answered") -> dict:
    """Status read from the disk. ``manifest_dir`` and ``node_name`` override the daemon's
    record under ``root_dir``; ``why`` says why the daemon was not asked (it heads the note)."""
    from volumemanager.plugins import build_plugins

    manifest_dir, node_name, record, notes = _settings(root_dir, manifest_dir, node_name)
    unknown = list(UNKNOWN_WITHOUT_DAEMON)
    desired_known = os.path.isdir(manifest_dir)
    if not desired_known:
        unknown.insert(0, f"the desired state (the manifest dir {manifest_dir} does not exist)")
    mounter = LinuxMounter()
    table = mounter.mount_table()
    plugins = build_plugins(DaemonPluginHost(root_dir, node_name, mounter))
    rows: list[st.VolumeRow] = []
    known: set[str] = set()
    errors: list[dict] = []
    if desired_known:
        rows, known, errors = _read_desired(manifest_dir, plugins, table)
    recorded_dir = record.get("manifest_dir")
    if recorded_dir and os.path.abspath(recorded_dir) != os.path.abspath(manifest_dir) and os.path.isdir(recorded_dir):
        # The daemon's own desired state: what it mounts for those pods is not an orphan,
        # whatever directory this command was pointed at.
        known |= _read_desired(recorded_dir, plugins, table)[1]
    rows.sort(key=lambda r: (r.pod, r.volume))
    mounts = st.find_orphans(root_dir, table, known)
    if desired_known:
        orphans, unclassified = mounts, []
    else:
        # Without the desired state no mount can be called an orphan.
        orphans = []
        unclassified = [{**o, "reason": "mounted under the root dir; whether a pod wants it is unknown "
                                        f"(the manifest dir {manifest_dir} does not exist)"} for o in mounts]
    note = "; ".join([f"{why}: read from the disk: desired state from the manifest dir {manifest_dir}, actual "
                      "state from the root dir and /proc/self/mountinfo", *notes])
    return {
        "node": node_name,
        "source": "disk",
        "note": note,
        "unknown": unknown,
        "record": record,
        "manifest_dir": os.path.abspath(manifest_dir),
        "root_dir": os.path.abspath(root_dir),
        "volumes": [r.to_dict() for r in rows],
        "orphans": orphans,
        "unclassified_mounts": unclassified,
        "drivers": [],
        "manifest_errors": errors,
    }
