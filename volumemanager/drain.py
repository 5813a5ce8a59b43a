"""Cordon and drain: take the node out of service without touching the desired state.

While the node is drained the reconciler reads the desired state through
``DrainableDesiredState``, which answers "nothing is desired". The reconciler then does exactly
what it does when every pod's manifest is removed: the same operations in the same order (pod
views, then staging), with the same refusals (a busy volume stays, and says who holds it), and
it mounts nothing. Nothing else changes:

* the populator keeps the real desired state current, so ``uncordon`` only has to let the
  reconciler see it again (and a pod added while drained is known, just not mounted);
* the rule "nothing is unmounted before the desired state has been read whole" is the
  reconciler's own (``ready_to_unmount``) and still holds: a drain asked for at start-up waits
  for it, it is not a source failure;
* mounts adopted at start-up are in the actual state like any other, so they are torn down too.

Drained lives in memory only: restarting the daemon resumes service, as ``uncordon`` does.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
from typing import Callable, Iterable

from operation_executor.executor import OperationExecutor, OperationKey, OperationOutcome
from operation_executor.generator import UNMOUNT_VOLUME
from operation_executor.types import VolumeToMount
from volumemanager import status as st
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld


class EmptyDesiredState:
    """The desired state of a drained node: nothing. Implements the readers the reconciler
    and ``status.daemon_rows`` use."""

    def volume_ids(self) -> set[str]:
        return set()

    def volume_exists(self, volume_id: str) -> bool:
        return False

    def pod_exists_in_volume(self, volume_id: str, pod_uid: str) -> bool:
        return False

    def volumes_to_mount(self, volume_ids: Iterable[str] | None = None) -> list[VolumeToMount]:
        return []

    def pods(self) -> list[DesiredPod]:
        return []


EMPTY_DESIRED = EmptyDesiredState()


class DrainableDesiredState:
    """What the reconciler reads as the desired state: the real one, or nothing while drained.

    A view, not a copy: the flag is read on every call, so a pass that straddles ``drain``
    sees at worst a mix that the next pass (all volumes are marked dirty) corrects."""

    def __init__(self, dsw: DesiredStateOfWorld, is_drained: Callable[[], bool]) -> None:
        self._dsw = dsw
        self._is_drained = is_drained

    def _current(self):
        return EMPTY_DESIRED if self._is_drained() else self._dsw

    def volume_ids(self) -> set[str]:
        return self._current().volume_ids()

    def volume_exists(self, volume_id: str) -> bool:
        return self._current().volume_exists(volume_id)

    def pod_exists_in_volume(self, volume_id: str, pod_uid: str) -> bool:
        return self._current().pod_exists_in_volume(volume_id, pod_uid)

    def volumes_to_mount(self, volume_ids: Iterable[str] | None = None) -> list[VolumeToMount]:
        return self._current().volumes_to_mount(volume_ids)

    def pods(self) -> list[DesiredPod]:
        return self._current().pods()


def _holders(err) -> list[dict]:
    """The holders a teardown error carries (``OperationError.holders``), as plain dicts."""
    return [h.to_dict() for h in getattr(err, "holders", None) or ()]


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DrainController:
    """The drained flag, and what ``drain``/``uncordon``/``status`` need to know about it.

    Gets the caches and the executor to describe progress; the reconciler and its readiness
    check are attached after the reconciler is built (it is built with ``desired_view``)."""

    def __init__(self, dsw: DesiredStateOfWorld, asw: ActualStateOfWorld, executor: OperationExecutor,
                 pods_dir: str, remove_skeleton: Callable[[str], object],
                 operation_label: st.OperationLabel | None = None) -> None:
        self._asw = asw
        # How each plugin names its operations in the rows (the plugin registry's).
        self._operation_label = operation_label or (lambda plugin, operation: operation)
        self._executor = executor
        self._pods_dir = pods_dir
        # rmdir of the empty layout dirs of pods/<uid> (the daemon's, which knows the plugins).
        self._remove_skeleton = remove_skeleton
        self._lock = threading.Lock()
        self._since: float | None = None
        self._total = 0
        self.desired_view = DrainableDesiredState(dsw, self.is_drained)
        self._reconciler = None
        self._ready: Callable[[], bool] = lambda: False
        executor.add_completion_callback(self._after_operation)

    def attach(self, reconciler, ready_to_unmount: Callable[[], bool]) -> None:
        self._reconciler = reconciler
        self._ready = ready_to_unmount

    def is_drained(self) -> bool:
        return self._since is not None

    @property
    def since(self) -> float | None:
        return self._since

    def _after_operation(self, outcome: OperationOutcome) -> None:
        """A drained pod's last view is gone: remove its empty ``pods/<uid>`` skeleton, as
        for a removed pod (the desired state still holds the pod, so nothing else would)."""
        uid = outcome.key.pod_uid
        if not self.is_drained() or outcome.operation != UNMOUNT_VOLUME or outcome.error is not None or not uid:
            return
        if self._asw.mounted_volumes_of_pod(uid):  # the per-pod index: a drain of 10,000 was N^2
            return
        self._remove_skeleton(uid)

    # --- admin methods --------------------------------------------------------------------

    def drain(self, dry_run: bool = False) -> dict:
        """Start draining (idempotent: a second drain keeps the first one's time). Returns the
        teardown steps the reconciler would start now; with ``dry_run`` only those."""
        if dry_run:
            steps = self._whole_teardown()
            return {"dry_run": True, "drained": self.is_drained(), "steps": steps,
                    "volumes": len(self._asw.volume_ids()), "waiting_for_desired_state": not self._ready()}
        with self._lock:
            already = self._since is not None
            if not already:
                self._since = time.time()
                self._total = len(self._asw.volume_ids())
        self._reconciler.mark_all_dirty()
        steps = [a.to_dict() for a in self._reconciler.plan()]
        return {"dry_run": False, "drained": True, "already_drained": already, "since": self._since,
                "volumes": self._total, "steps": steps, "waiting_for_desired_state": not self._ready()}

    def _whole_teardown(self) -> list[dict]:
        """Every step a drain would take, not only the next pass's: the pod views (what the
        reconciler would start now against an empty desired state), then the staged devices,
        which the reconciler unstages once their last pod view is gone."""
        steps = [a.to_dict() for a in self._reconciler.plan(desired=EMPTY_DESIRED)]
        listed = {(s["action"], s["volume_id"]) for s in steps}
        for av in self._asw.attached_volumes():
            if not (av.device_mountable and av.device_state.may_be_mounted):
                continue
            if ("unmount_device", av.volume_id) in listed:
                continue
            steps.append({"action": "unmount_device", "volume_id": av.volume_id, "pod": None, "pod_uid": None,
                          "volume": None, "plugin": av.plugin_name,
                          "detail": f"unstage {av.device_mount_path or av.volume_id} (after its pods' views)",
                          "blocked_by": None})
        return steps

    def uncordon(self) -> dict:
        with self._lock:
            since, self._since, self._total = self._since, None, 0
        self._reconciler.mark_all_dirty()
        return {"drained": False, "was_drained": since is not None, "was_drained_since": since}

    # --- what status and explain show -----------------------------------------------------

    def explain_line(self) -> str | None:
        since = self._since
        if since is None:
            return None
        return (f"node is drained since {_iso(since)}: not mounting "
                "(run 'volumemanager uncordon', or restart the daemon, to resume)")

    def progress(self, orphans: list[dict]) -> dict | None:
        """The ``drained`` object of ``status``: None unless drained."""
        since = self._since
        if since is None:
            return None
        left = self._left()
        volumes_left = len(self._asw.volume_ids())
        total = max(self._total, volumes_left)
        pod_dirs = self._pod_dirs_left()
        ready = self._ready()
        in_flight = self._executor.pending_count()
        steps = [a.to_dict() for a in self._reconciler.plan()]
        return {
            "since": since,
            "since_iso": _iso(since),
            "volumes_total": total,
            "volumes_left": volumes_left,
            "left": left,
            "refused": [x for x in left if x.get("last_error")],
            "steps": steps,
            "operations_in_flight": in_flight,
            "orphans_left": [o["mount_path"] for o in orphans],
            "pod_dirs_left": pod_dirs,
            "waiting_for_desired_state": not ready,
            "complete": ready and volumes_left == 0 and not orphans and not pod_dirs and in_flight == 0,
        }

    def _left(self) -> list[dict]:
        """Every pod view still in the actual state (as status rows: error, holders, retry),
        then every staged device no pod uses any more."""
        out = [r.to_dict() for r in st.daemon_rows(EMPTY_DESIRED, self._asw, self._executor, self._operation_label)]
        for av in self._asw.attached_volumes():
            if av.pod_uids or not (av.device_mountable and av.device_state.may_be_mounted):
                continue
            result = self._asw.result(av.volume_id, None)
            err = result.error if result is not None else None
            retry = self._executor.backoff_remaining(OperationKey(av.volume_id))
            out.append({
                "pod": None, "pod_uid": None, "volume": av.volume_id, "volume_id": av.volume_id,
                "plugin": av.plugin_name, "desired": False, "state": "unstaging",
                "mount_path": None, "device_path": av.device_path, "device_mount_path": av.device_mount_path,
                "last_error": str(err) if err is not None else None,
                "error_code": getattr(err, "code", None) if err is not None else None,
                "in_progress": self._executor.pending_operation(av.volume_id, None),
                "next_retry_seconds": round(retry, 1) if retry > 0 else None,
                "holders": _holders(err),
            })
        return out

    def _pod_dirs_left(self) -> list[str]:
        try:
            return sorted(os.path.join(self._pods_dir, d) for d in os.listdir(self._pods_dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
