"""What ``status``, ``explain`` and ``wait`` show: one row per (pod, volume), desired vs actual,
with the cause of anything not mounted. Built from the caches by the daemon, or from the disk
(manifests + root dir + mountinfo) when no daemon answers."""

from __future__ import annotations

import copy
import datetime as _dt
import os
import time
from dataclasses import dataclass, fields
from typing import Callable

from mount_utils.mounter import LinuxMounter
from mount_utils.mountinfo import mount_point_of, read_lines_under, table_of_lines
from operation_executor.errors import OperationError, WaitingError
from operation_executor.executor import OperationExecutor, OperationKey
from operation_executor.states import DeviceMountState, VolumeMountState
from volumemanager.cache.actual_state import ActualStateOfWorld, OperationResult
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld
from volumemanager.sources.base import origin_kind

MOUNTED = "mounted"
PENDING = "pending"
WAITING = "waiting"
ERROR = "error"
UNCERTAIN = "uncertain"
UNMOUNTING = "unmounting"
STATES = (MOUNTED, PENDING, WAITING, ERROR, UNCERTAIN, UNMOUNTING)

# How a plugin names an operation (plugin name, operation) -> label: the plugin registry's
# ``operation_label``; without a registry, the operation's own name.
OperationLabel = Callable[["str | None", str], str]


def _plain_label(plugin: str | None, operation: str) -> str:
    return operation


@dataclass
class VolumeRow:
    pod: str
    pod_uid: str
    volume: str
    plugin: str | None
    desired: bool
    state: str
    mount_path: str | None = None
    device_path: str | None = None
    device_mount_path: str | None = None
    last_error: str | None = None
    error_code: str | None = None
    error_operation: str | None = None
    error_since: float | None = None
    next_retry_seconds: float | None = None
    waiting_for: str | None = None
    volume_id: str | None = None
    in_progress: str | None = None
    reason: str | None = None  # why an unresolved volume cannot be mounted
    size_bytes: int | None = None  # the filesystem's size after the last online expansion
    # The processes keeping the volume busy ({pid, command, holds}) when the last error is "in use".
    holders: list[dict] | None = None
    # What applying the pod's fsGroup did at the last set-up: {gid, policy, mode, seconds,
    # files_changed, files, dirs, skipped_reason}; None when the pod has no fsGroup.
    fs_group: dict | None = None
    # Where the pod comes from: "api" (the API server) or "manifests"; None when not desired.
    source: str | None = None

    def to_dict(self) -> dict:
        # What dataclasses.asdict gave, ~10x faster: asdict recurses into (and deep-copies)
        # every field, which at 10,000 rows cost more than the rest of ``status``. Only the
        # two fields that hold containers need a copy.
        d = {name: getattr(self, name) for name in _ROW_FIELDS}
        if d["holders"] is not None:
            d["holders"] = copy.deepcopy(d["holders"])
        if d["fs_group"] is not None:
            d["fs_group"] = dict(d["fs_group"])  # flat: FsGroupResult.to_dict
        if d["next_retry_seconds"] is not None:
            d["next_retry_seconds"] = round(d["next_retry_seconds"], 1)
        return d


_ROW_FIELDS = tuple(f.name for f in fields(VolumeRow))


def _apply_result(row: VolumeRow, result: OperationResult | None, label: OperationLabel = _plain_label) -> None:
    if result is None or result.error is None:
        return
    err: OperationError = result.error
    row.last_error = str(err)
    row.error_code = err.code
    row.error_operation = label(row.plugin, result.operation)
    row.error_since = result.since
    if isinstance(err, WaitingError):
        row.waiting_for = err.waiting_for
    holders = getattr(err, "holders", ())
    row.holders = [h.to_dict() for h in holders] if holders else None


def daemon_rows(dsw: DesiredStateOfWorld, asw: ActualStateOfWorld, executor: OperationExecutor,
                operation_label: OperationLabel = _plain_label) -> list[VolumeRow]:
    rows: list[VolumeRow] = []
    desired_pairs: set[tuple[str, str]] = set()
    for dp in dsw.pods():
        for u in dp.unresolved:
            rows.append(_unresolved_row(dp, u))
        for vtm in dp.volumes:
            desired_pairs.add((vtm.volume_id, vtm.pod.uid))
            rows.append(_desired_row(dp, vtm, asw, executor, operation_label))
    rows += [_undesired_row(mv, asw, executor, operation_label) for mv in asw.mounted_volumes()
             if (mv.volume_id, mv.pod.uid) not in desired_pairs]
    rows.sort(key=lambda r: (r.pod, r.volume))
    return rows


def desired_pod_rows(dp: DesiredPod, asw: ActualStateOfWorld, executor: OperationExecutor,
                     operation_label: OperationLabel = _plain_label) -> list[VolumeRow]:
    """The rows of one desired pod, as ``daemon_rows`` builds them, without walking every
    volume: ``explain POD`` at 10,000 volumes must cost what the pod's few volumes cost
    (each lookup below is by (volume id, pod uid))."""
    rows = [_unresolved_row(dp, u) for u in dp.unresolved]
    rows += [_desired_row(dp, vtm, asw, executor, operation_label) for vtm in dp.volumes]
    rows.sort(key=lambda r: r.volume)
    return rows


def undesired_pod_rows(pod_key: str, dsw: DesiredStateOfWorld, asw: ActualStateOfWorld,
                       executor: OperationExecutor, operation_label: OperationLabel = _plain_label) -> list[VolumeRow]:
    """The ``unmounting`` rows of a pod that is not desired (by "namespace/name" or UID), as
    ``daemon_rows`` builds them, from the actual state's per-pod index instead of every mount."""
    rows = [_undesired_row(mv, asw, executor, operation_label) for mv in asw.mounted_volumes_of_pod(pod_key)
            if not dsw.pod_exists_in_volume(mv.volume_id, mv.pod.uid)]
    rows.sort(key=lambda r: (r.pod, r.volume))
    return rows


def _unresolved_row(dp: DesiredPod, u) -> VolumeRow:
    """The ``waiting`` row of a pod volume that cannot be resolved yet."""
    return VolumeRow(
        pod=dp.pod.key, pod_uid=dp.pod.uid, volume=u.outer_name, plugin=u.plugin_name, desired=True,
        state=WAITING, last_error=u.reason, reason=u.reason, waiting_for=u.waiting_for,
        source=_pod_source(dp),
    )


def _undesired_row(mv, asw: ActualStateOfWorld, executor: OperationExecutor,
                   operation_label: OperationLabel = _plain_label) -> VolumeRow:
    """The ``unmounting`` row of a pod view that is mounted but no longer desired."""
    av = asw.get_volume(mv.volume_id)
    row = VolumeRow(
        pod=mv.pod.key, pod_uid=mv.pod.uid, volume=mv.outer_name, plugin=mv.plugin_name, desired=False,
        state=UNMOUNTING, mount_path=mv.mount_path, volume_id=mv.volume_id,
        device_path=av.device_path if av else None, device_mount_path=mv.device_mount_path,
    )
    _apply_result(row, asw.result(mv.volume_id, mv.pod.uid), operation_label)
    row.in_progress = executor.pending_operation(mv.volume_id, mv.pod.uid)
    row.next_retry_seconds = executor.backoff_remaining(OperationKey(mv.volume_id, mv.pod.uid)) or None
    return row


def _pod_source(dp: DesiredPod) -> str:
    """``api`` for a pod from the API server, else ``manifests``."""
    return origin_kind(dp.source)


def _desired_row(dp: DesiredPod, vtm, asw: ActualStateOfWorld, executor: OperationExecutor,
                 operation_label: OperationLabel = _plain_label) -> VolumeRow:
    vid, uid = vtm.volume_id, vtm.pod.uid
    av = asw.get_volume(vid)
    mv = asw.get_mount(vid, uid)
    row = VolumeRow(
        pod=dp.pod.key, pod_uid=uid, volume=vtm.outer_name, plugin=vtm.plugin_name, desired=True, state=PENDING,
        volume_id=vid, mount_path=mv.mount_path if mv else None,
        device_path=av.device_path if av else None, device_mount_path=av.device_mount_path if av else None,
    )
    row.size_bytes = asw.size_bytes(vid)
    row.source = _pod_source(dp)
    fs_group = asw.fs_group(vid, uid)
    row.fs_group = fs_group.to_dict() if fs_group is not None else None
    pod_state = mv.state if mv else VolumeMountState.NOT_MOUNTED
    key_pod = vtm.operation_pod_uid
    row.in_progress = executor.pending_operation(vid, key_pod)
    device_staged = av is not None and av.device_state is DeviceMountState.MOUNTED
    # The error that blocks this pod: the staging error while the device is not staged,
    # else the pod's own SetUp error.
    result = None
    if vtm.device_mountable and not device_staged:
        result = asw.result(vid, None)
    if result is None or result.error is None:
        result = asw.result(vid, uid)
    _apply_result(row, result, operation_label)
    retry = executor.backoff_remaining(OperationKey(vid, key_pod))
    row.next_retry_seconds = retry if retry > 0 else None
    if pod_state is VolumeMountState.MOUNTED:
        row.state = MOUNTED
        row.last_error = row.error_code = row.error_operation = row.error_since = row.waiting_for = None
        row.next_retry_seconds = None
        row.holders = None
    elif pod_state is VolumeMountState.UNCERTAIN:
        row.state = UNCERTAIN
    elif row.in_progress:
        row.state = PENDING
    elif row.waiting_for is not None:
        row.state = WAITING
    elif row.last_error is not None:
        row.state = ERROR
    return row


def _ago(ts: float | None) -> str:
    if ts is None:
        return ""
    when = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f" since {when} ({max(0, int(time.time() - ts))}s ago)"


def explain_row(row: VolumeRow, drivers: set[str] | None = None) -> list[str]:
    """The chain of causes for one row, most direct first."""
    lines: list[str] = []
    if row.state == MOUNTED:
        lines.append(f"mounted at {row.mount_path}")
        if row.size_bytes:
            lines.append(f"expanded online to {row.size_bytes} bytes")
        if row.device_mount_path:
            lines.append(f"staged at {row.device_mount_path}" + (f" from {row.device_path}" if row.device_path else ""))
        lines.extend(fs_group_lines(row.fs_group))
        return lines
    if row.reason is not None:
        lines.append(f"not mounted: {row.reason}")
        return lines
    if row.state == UNMOUNTING:
        lines.append(f"not desired any more: being torn down (unmounting {row.mount_path})")
    elif row.state == UNCERTAIN:
        lines.append(f"possibly mounted at {row.mount_path}: the last attempt's outcome is unknown; retrying")
    else:
        lines.append("not mounted")
    if row.waiting_for is not None:
        wf = row.waiting_for
        if wf.startswith("CSI driver ") and drivers is not None and wf[len("CSI driver "):] not in drivers:
            name = wf[len("CSI driver "):]
            lines.append(
                f"waiting for CSI driver {name}: not registered (no registration socket in plugins_registry/, "
                f"no --csi-driver {name}=...){_ago(row.error_since)}"
            )
        elif row.error_code == "CONTENT_UNAVAILABLE" and row.last_error:
            # configMap/secret/downwardAPI/projected: the reason says more than the object.
            reason = row.last_error.removeprefix("CONTENT_UNAVAILABLE: ")
            lines.append(f"{reason}: waiting for {wf}{_ago(row.error_since)}")
        else:
            # A wait whose message says why (``waiting for device X: open fails with ENXIO``).
            detail = (row.last_error or "").removeprefix(f"{row.error_code}: ") if row.error_code else ""
            said = detail if detail.startswith(f"waiting for {wf}: ") else f"waiting for {wf}"
            lines.append(f"{said}{_ago(row.error_since)}")
    elif row.last_error is not None:
        lines.append(f"last error from {row.error_operation}: {row.last_error}{_ago(row.error_since)}")
    lines.extend(holder_lines(row.holders))
    if row.in_progress:
        lines.append(f"operation {row.in_progress} in progress")
    elif row.next_retry_seconds:
        lines.append(f"next retry in {row.next_retry_seconds:.1f} s")
    return lines


def fs_group_lines(fs: dict | None) -> list[str]:
    """``fsGroup 2000 (OnRootMismatch): 100001 of 100001 entries changed in 1.21 s`` or why none."""
    if not fs:
        return []
    head = f"fsGroup {fs['gid']} ({fs['policy']})"
    if fs.get("skipped_reason"):
        return [f"{head}: no walk: {fs['skipped_reason']}"]
    return [f"{head}: {fs['files_changed']} of {fs['files'] + fs['dirs']} entries changed in {fs['seconds']:.2f} s"]


def holder_lines(holders: list[dict] | None) -> list[str]:
    """``busy: held by pid 1234 (sleep): cwd /var/lib/.../cache`` for each holder."""
    return [f"busy: held by pid {h['pid']} ({h['command']}): {', '.join(h['holds'])}" for h in holders or ()]


def orphans(mounter, root_dir: str, known_paths: set[str]) -> list[dict]:
    """``find_orphans`` for the daemon's mounter. With the kernel's table, only the lines below
    the root dir whose mount point is not known are parsed: at 10,000 volumes parsing the whole
    table was a fifth of ``status`` (and every line below the root is usually a known volume)."""
    if not isinstance(mounter, LinuxMounter):
        return find_orphans(root_dir, mounter.mount_table(), known_paths)
    root = os.path.abspath(root_dir)
    below = root.rstrip("/") + "/"
    unknown = []
    for line in read_lines_under(root, mounter.mountinfo_path):
        point = mount_point_of(line)
        if point != root and point.startswith(below) and point not in known_paths:
            unknown.append(line)
    return find_orphans(root_dir, table_of_lines(unknown, root), known_paths)


def find_orphans(root_dir: str, table, known_paths: set[str]) -> list[dict]:
    """Mounts under the root dir that nothing desired or recorded accounts for."""
    root = os.path.abspath(root_dir)
    orphans = []
    for mi in table.under(root):
        if mi.mount_point == root or mi.mount_point in known_paths:
            continue
        orphans.append({"mount_path": mi.mount_point, "reason": "mounted under the root dir but not desired by any pod",
                        "fs_type": mi.fs_type})
    return orphans
