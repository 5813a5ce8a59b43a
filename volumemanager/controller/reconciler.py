"""The controller reconciler: provisions and deletes volumes for claims, beside the node reconciler.

Its own small loop, woken by whatever may change a decision (a desired-state change, a driver
registering, any operation finishing, a backoff running out) and by a slow timer as a safety
net. A pass reads the desired state *without* our records (the overlay's raw snapshot), the
records, what the drivers can do and which volumes the node uses, calls the pure
``decide.decide`` and starts the actions through the shared executor (one key per volume,
``controller/<pv name>``), so backoff and "one operation per volume" are the executor's.

It also answers for the claims: ``claims()`` for ``status --json``, ``explain_claim`` for
``explain`` and ``plan()`` for ``plan``.

Adding a step (attach, expand, snapshot): give ``decide`` the action kind, give
``ControllerOperations`` the method that builds it, and map the kind in ``_generate``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from operation_executor.errors import AlreadyPendingError, BackoffError, OperationError, WaitingError, is_uncertain
from operation_executor.executor import OperationExecutor, OperationKey, OperationOutcome
from volumemanager.controller import claims as cl
from volumemanager.controller import decide as dc
from volumemanager.controller.operations import ControllerOperations, operation_key
from volumemanager.controller.overlay import ProvisionedOverlaySource
from volumemanager.controller import snapshots as sn
from volumemanager.controller.records import ANN_PROVISIONED_BY, ProvisionedVolumes
from volumemanager.controller.snapshot_operations import NOT_READY, SnapshotOperations
from volumemanager.controller.snapshot_records import SnapshotRecords
from volumemanager.manifests import models as m

log = logging.getLogger(__name__)

# A safety net only: events wake the loop. While a claim waits or backs off, passes come
# this often so a backoff that ran out is acted on promptly.
IDLE_RECHECK_SECONDS = 10.0
BUSY_RECHECK_SECONDS = 0.5
KEY_PREFIX = "controller/"

PENDING, BOUND, RELEASED, LOST = "Pending", "Bound", "Released", "Lost"

# (PV names, (driver, volume handle) pairs) the node still uses: mounts, stages, desired pods.
InUseReader = Callable[[], tuple[frozenset[str], frozenset[tuple[str, str]]]]


@dataclass
class _Result:
    operation: str
    error: BaseException | None
    at: float


class ControllerReconciler:
    def __init__(
        self,
        source: ProvisionedOverlaySource,
        records: ProvisionedVolumes,
        drivers: Any,
        executor: OperationExecutor,
        operations: ControllerOperations,
        in_use: InUseReader,
        ready_to_delete: Callable[[], bool],
        on_records_changed: Callable[[], None],
        snapshot_records: SnapshotRecords | None = None,
        snapshot_ops: SnapshotOperations | None = None,
        attach: Any = None,
    ) -> None:
        # Attach/detach (controller/attach.py): its actions join each pass; a volume is
        # deleted only after its ControllerUnpublishVolume.
        self._attach = attach
        self._snapshot_records = snapshot_records
        self._snapshot_ops = snapshot_ops
        # The content source (restore/clone) of each CreateVolume in _background.
        self._background_sources: dict[str, tuple[str, str]] = {}
        # CreateSnapshot calls whose outcome is unknown: name -> the request to send again.
        self._snapshot_background: dict[str, sn.SnapshotRequest] = {}
        self._source = source
        self._records = records
        self._drivers = drivers
        self._executor = executor
        self._ops = operations
        self._in_use = in_use
        self._ready_to_delete = ready_to_delete
        self._on_records_changed = on_records_changed
        self._cond = threading.Condition()
        self._dirty = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self._results: dict[str, _Result] = {}
        self._last_waiting: dict[str, str] = {}
        self._last_refused: dict[str, tuple[str, str]] = {}  # expansions refused by decide (no call)
        # CreateVolume calls whose outcome is unknown: name -> (claim, class) to send again.
        self._background: dict[str, tuple[m.PersistentVolumeClaim, m.StorageClass]] = {}
        self.passes = 0
        executor.add_completion_callback(self._on_complete)
        drivers.subscribe(lambda name: self.wake())

    # --- loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._run, name="vm-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._dirty and not self._stop:
                    busy = bool(self._last_waiting) or any(r.error is not None for r in self._results.values())
                    self._cond.wait(BUSY_RECHECK_SECONDS if busy else IDLE_RECHECK_SECONDS)
                if self._stop:
                    return
                self._dirty = False
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - the loop must survive a bug in one pass
                log.exception("controller reconcile pass failed")

    def _on_complete(self, outcome: OperationOutcome) -> None:
        key = outcome.key.volume_id
        if key.startswith(KEY_PREFIX):
            name = key[len(KEY_PREFIX):]
            with self._cond:
                self._results[name] = _Result(outcome.operation, outcome.error, time.time())
                if outcome.operation == "CreateSnapshot" and (outcome.error is None or not is_uncertain(outcome.error)):
                    self._snapshot_background.pop(name, None)
                if outcome.operation == "CreateVolume" and (outcome.error is None or not is_uncertain(outcome.error)):
                    self._background.pop(name, None)
                elif outcome.operation == "DeleteVolume" and outcome.error is None:
                    # An interrupted CreateVolume whose volume was made before the crash (its record
                    # written, then released and now deleted) is done: sending it again would make
                    # the volume a second time (tests/e2e/test_crash_controller.py).
                    self._background.pop(name, None)
                    self._background_sources.pop(name, None)
            if outcome.error is None:
                self._on_records_changed()
            self.wake()
        elif self._node_matters():
            self.wake()  # a node tear-down may free a volume to delete or detach

    def _node_matters(self) -> bool:
        """Whether a node operation finishing may change a decision: only while a volume of
        ours exists (a provisioned or attached one may be waiting for the node to let go) or
        something waits. A node with none (tmpfs, hostPath, static PVs) never wakes this loop
        per mount: at 10,000 volumes each pass would walk the desired state once per mount."""
        with self._cond:
            if self._last_waiting:
                return True
        return self._records.count() > 0 or (self._attach is not None and self._attach.records.count() > 0)

    def adopt_interrupted(self, intents: list[dict]) -> None:
        """At start, before the journal forgets them: each CreateVolume the last run began and
        never ended may have made a volume, so it is sent again (same name, same request) even
        if its claim is gone by now; then the volume is released like any other."""
        from volumemanager.controller.operations import from_request_record

        for rec in intents:
            key = str(rec.get("volume_id") or "")
            if rec.get("step") == "CreateSnapshot" and key.startswith(KEY_PREFIX):
                self._adopt_snapshot(key[len(KEY_PREFIX):], rec)
                continue
            if rec.get("step") != "CreateVolume" or not key.startswith(KEY_PREFIX):
                continue
            try:
                claim, sc = from_request_record((rec.get("details") or {})["request"])
            except (KeyError, TypeError, ValueError) as e:
                log.error("interrupted CreateVolume of %s cannot be finished: its intent record is "
                          "incomplete (%s); the driver may hold a volume of that name", key, e)
                continue
            source = ((rec.get("details") or {}).get("request") or {}).get("content_source")
            with self._cond:
                self._background.setdefault(key[len(KEY_PREFIX):], (claim, sc))
                if isinstance(source, list) and len(source) == 2:
                    self._background_sources.setdefault(key[len(KEY_PREFIX):], (str(source[0]), str(source[1])))
            log.warning("CreateVolume of %s (claim %s) was interrupted by the last stop: it is sent again",
                        key[len(KEY_PREFIX):], claim.key)

    # --- deciding -------------------------------------------------------------------------

    def _driver_views(self) -> dict[str, dc.DriverView]:
        return {d.name: dc.DriverView(d.controller_endpoint is not None, d.controller_capabilities,
                                      frozenset(d.capabilities))
                for d in self._drivers.list()}

    def _in_use_names(self, records: dict[str, m.PersistentVolume], snap: m.Snapshot) -> frozenset[str]:
        live = {c.uid for c in snap.pvcs.values()}
        if all(pv.annotations.get(dc.ANN_CLAIM_UID) in live for pv in records.values()):
            return frozenset()  # nothing released: no need to look at the node
        names, handles = self._in_use()
        if "*" in names:
            return frozenset(records)
        used = set(names)
        for name, pv in records.items():
            src = pv.source
            if isinstance(src, m.CSISource) and (src.driver, src.volume_handle) in handles:
                used.add(name)
        return frozenset(used & set(records))

    def decision(self) -> dc.Decision:
        records = self._records.all()
        with self._cond:
            background = {name: sc.provisioner for name, (_, sc) in self._background.items()}
        snap = self._source.raw_snapshot()
        snapshots = self._snapshot_records.all() if self._snapshot_records is not None else None
        with self._cond:
            snapshots_background = {name: req.driver for name, req in self._snapshot_background.items()}
        decision = dc.decide(snap, records, self._driver_views(), self._in_use_names(records, snap),
                             self._ready_to_delete(), background, snapshot_records=snapshots,
                             snapshots_in_background=snapshots_background)
        if self._attach is not None:
            from volumemanager.controller import attach as at

            attached = self._attach.decision()
            decision.actions = at.hold_deletes(decision.actions, decision.waiting, self._attach.records.all(),
                                               dc.DELETE) + attached.actions
            for name, why in attached.waiting.items():
                decision.waiting.setdefault(name, why)
        return decision

    def reconcile(self) -> list[dc.ControllerAction]:
        self.passes += 1
        decision = self.decision()
        with self._cond:
            self._last_waiting = dict(decision.waiting)
            self._last_refused = dict(decision.refused)
        started = []
        for action in decision.actions:
            if self._start(action):
                started.append(action)
        return started

    def _start(self, action: dc.ControllerAction) -> bool:
        try:
            op = self._generate(action)
            if op is None:
                return False
            self._executor.run(OperationKey(operation_key(action.name)), op.name, op.fn,
                               plugin=action.driver, lane=op.lane)
            return True
        except (AlreadyPendingError, BackoffError):
            return False

    def _generate(self, action: dc.ControllerAction):
        if self._attach is not None and action.kind in ("attach", "detach"):
            return self._attach.operation(action)
        if action.kind == dc.PROVISION:
            snap = self._source.raw_snapshot()
            claim = next((c for c in snap.pvcs.values() if c.uid == action.claim_uid), None)
            sc = cl.storage_class_of(claim, snap) if claim is not None else None
            if claim is None or sc is None:
                # An uncertain CreateVolume of a claim that is gone: the same request again.
                with self._cond:
                    claim, sc = self._background.get(action.name, (None, None))
                    source = self._background_sources.get(action.name)
                if source is not None:
                    action = replace(action, content_source=source)
            if claim is None or sc is None:
                return None
            op = self._ops.provision(action, claim, sc)
            remembered = (claim, sc)
            remembered_source = action.content_source

            def run() -> None:
                with self._cond:  # from the moment the call may reach the driver until its outcome is known
                    self._background[action.name] = remembered
                    if remembered_source is not None:
                        self._background_sources[action.name] = remembered_source
                op.fn()

            return replace(op, fn=run)
        if action.kind == dc.DELETE:
            return self._ops.delete(action)
        if action.kind in (sn.CREATE_SNAPSHOT, sn.DELETE_SNAPSHOT):
            return self._generate_snapshot(action)
        if action.kind == dc.EXPAND:
            snap = self._source.raw_snapshot()
            claim = next((c for c in snap.pvcs.values() if c.uid == action.claim_uid), None)
            if claim is None:
                return None
            views = self._driver_views()
            view = views.get(action.driver)
            controller = view is not None and view.has_controller and dc.EXPAND_VOLUME in view.controller_capabilities
            return self._ops.expand(action, claim, cl.storage_class_of(claim, snap), controller)
        raise ValueError(f"unknown controller action {action.kind!r}")

    # --- snapshots (snapshots.py decides, snapshot_operations.py runs) ---------------------

    def _generate_snapshot(self, action: dc.ControllerAction):
        if self._snapshot_ops is None or self._snapshot_records is None:
            return None
        if action.kind == sn.DELETE_SNAPSHOT:
            return self._snapshot_ops.delete(action)
        rec = self._snapshot_records.get(action.name)
        if rec is not None:  # created, not ready yet: the same request again
            return self._snapshot_ops.create(action, lambda: sn.SnapshotRequest.from_record(rec))
        snap = self._source.raw_snapshot()
        uid = action.name[len(sn.NAME_PREFIX):]
        vs = next((v for v in snap.volumesnapshots.values() if v.uid == uid), None)
        with self._cond:
            earlier = self._snapshot_background.get(action.name)
        if vs is None and earlier is not None:
            # Its outcome was unknown and its VolumeSnapshot is gone: the same request again, so
            # the snapshot the driver may hold gets a record (then deleted or retained), not leaked.
            return self._snapshot_ops.create(action, lambda: earlier)
        claim = snap.pvcs.get((vs.namespace, vs.source_pvc_name)) if vs is not None else None
        pv = sn.pv_of_claim(claim, snap, self._records.all()) if claim is not None else None
        if vs is None or claim is None or pv is None or not isinstance(pv.source, m.CSISource):
            return None
        vsc = sn.snapshot_class_of(vs, snap, pv.source.driver)
        if vsc is None:
            return None

        def build() -> sn.SnapshotRequest:
            request = sn.build_snapshot_request(vs, vsc, pv, claim.key)
            with self._cond:  # from the moment the call may reach the driver until its outcome is known
                self._snapshot_background[action.name] = request
            return request

        return self._snapshot_ops.create(action, build)

    def _adopt_snapshot(self, name: str, intent: dict) -> None:
        """A CreateSnapshot the last run began and never ended may have made a snapshot: if its
        VolumeSnapshot is gone by now, it is sent again from the intent (see _generate_snapshot)."""
        try:
            request = sn.SnapshotRequest.from_record_dict((intent.get("details") or {})["request"])
        except (KeyError, TypeError, ValueError) as e:
            log.error("interrupted CreateSnapshot of %s cannot be finished: its intent record is incomplete (%s); "
                      "the driver may hold a snapshot of that name", name, e)
            return
        with self._cond:
            self._snapshot_background.setdefault(name, request)
        log.warning("CreateSnapshot of %s (volumesnapshot %s/%s) was interrupted by the last stop: it is sent "
                    "again", name, request.namespace, request.snapshot)

    def snapshots(self) -> list[dict]:
        """``status --json`` ``snapshots``: one entry per VolumeSnapshot of the desired state, and
        one per snapshot we created whose VolumeSnapshot is gone (Retained, or Deleting)."""
        if self._snapshot_records is None:
            return []
        snap = self._source.raw_snapshot()
        recs = self._snapshot_records.all()
        pvs = self._records.all()
        with self._cond:
            waiting = dict(self._last_waiting)
        out = []
        live = set()
        for vs in sorted(snap.volumesnapshots.values(), key=lambda v: v.key):
            name = sn.snapshot_name(vs)
            live.add(name)
            rec = recs.get(name)
            driver = rec.driver if rec is not None else None
            klass = vs.volume_snapshot_class_name or (rec.snapshot_class if rec is not None else None)
            if rec is None:
                claim = snap.pvcs.get((vs.namespace, vs.source_pvc_name))
                pv = sn.pv_of_claim(claim, snap, pvs) if claim is not None else None
                if pv is not None and isinstance(pv.source, m.CSISource):
                    vsc = sn.snapshot_class_of(vs, snap, pv.source.driver)
                    driver = vsc.driver if vsc is not None else pv.source.driver
                    klass = klass or (vsc.name if vsc is not None else None)
            phase = sn.READY if rec is not None and rec.ready_to_use else sn.PENDING
            out.append(self._snapshot_entry(name, vs.namespace, vs.name, vs.uid, f"{vs.namespace}/{vs.source_pvc_name}",
                                            klass, driver, rec, phase, waiting.get(name)))
        for name, rec in sorted(recs.items()):
            if name in live:
                continue
            phase = sn.DELETING if rec.deletion_policy == "Delete" else sn.RETAINED
            out.append(self._snapshot_entry(name, rec.namespace, rec.snapshot, rec.uid, rec.source_claim,
                                            rec.snapshot_class, rec.driver, rec, phase, waiting.get(name)))
        return out

    def _snapshot_entry(self, key: str, namespace: str, name: str, uid: str, source_claim: str,
                        klass: str | None, driver: str | None, rec, phase: str, waiting_for: str | None) -> dict:
        entry = {
            "name": name, "namespace": namespace, "uid": uid, "source_claim": source_claim,
            "class": klass or None, "driver": driver,
            "snapshot_handle": rec.snapshot_id if rec is not None else None,
            "ready_to_use": bool(rec is not None and rec.ready_to_use),
            "restore_size_bytes": rec.restore_size_bytes if rec is not None else None,
            "creation_time": rec.creation_time if rec is not None else None,
            "deletion_policy": rec.deletion_policy if rec is not None else None,
            "phase": phase, "waiting_for": waiting_for,
        }
        entry.update(self._error_fields(key))
        err = entry.get("last_error")
        if err is not None and err.get("code") == NOT_READY:
            entry["last_error"] = None  # followed, not failed: next_retry_seconds says when
        return entry

    def _data_source_lines(self, namespace: str, claim_name: str) -> list[str]:
        """The restore/clone part of a Pending claim's explain chain."""
        claim = self._source.raw_snapshot().pvcs.get((namespace, claim_name))
        ref = sn.data_source_of(claim) if claim is not None else None
        if ref is None:
            return []
        key = f"{namespace}/{ref.name}"
        if ref.kind != sn.SNAPSHOT_KIND:
            return [f"clones claim {key} (dataSource): CreateVolume carries its volume as the content source"]
        entry = next((s for s in self.snapshots() if s["namespace"] == namespace and s["name"] == ref.name
                      and s["phase"] in (sn.PENDING, sn.READY)), None)
        if entry is None:
            return [f"restores from volumesnapshot {key} (dataSource), which does not exist"]
        if entry["phase"] == sn.READY:
            return [f"restores from volumesnapshot {key}: Ready (snapshot {entry['snapshot_handle']}, "
                    f"{entry['restore_size_bytes']} bytes)"]
        lines = [f"restores from volumesnapshot {key}, which is Pending"]
        if entry["in_progress"]:
            lines.append(f"volumesnapshot {key}: {entry['in_progress']} in progress")
        err = entry["last_error"]
        if err is not None:
            lines.append(f"volumesnapshot {key}: {err['operation']} failed with {err['code']}: {err['message']}")
        elif entry["snapshot_handle"]:
            lines.append(f"volumesnapshot {key}: snapshot {entry['snapshot_handle']} is not ready to use yet")
        if entry["next_retry_seconds"] is not None and not entry["in_progress"]:
            lines.append(f"volumesnapshot {key}: next CreateSnapshot in {entry['next_retry_seconds']:.1f} s")
        if entry["waiting_for"]:
            lines.append(f"volumesnapshot {key}: waiting for {entry['waiting_for']}")
        return lines

    # --- answering ------------------------------------------------------------------------

    def _blocked_by(self, name: str, operation: str) -> str | None:
        running = self._executor.pending_operation(operation_key(name))
        if running is not None:
            return f"in progress: {running}"
        remaining = self._executor.backoff_remaining(OperationKey(operation_key(name)))
        if remaining > 0:
            return f"backoff: retry in {remaining:.1f}s"
        return None

    def plan(self) -> list[dict]:
        """The controller actions a pass would start now (``plan``), without starting them."""
        return [a.to_dict(self._blocked_by(a.name, a.kind)) for a in self.decision().actions]

    def _error_fields(self, name: str) -> dict:
        with self._cond:
            result = self._results.get(name)
        err = result.error if result is not None else None
        out: dict = {"last_error": None, "next_retry_seconds": None, "in_progress": None}
        running = self._executor.pending_operation(operation_key(name))
        if running is not None:
            out["in_progress"] = running
        refused = self._last_refused.get(name)
        if refused is not None and running is None:
            # Refused by the rules, nothing called: no retry until the claim or class changes.
            out["last_error"] = {"operation": "ExpandVolume", "code": refused[0], "message": refused[1],
                                 "at": None}
            return out
        if err is not None and not isinstance(err, WaitingError):
            out["last_error"] = {
                "operation": result.operation,
                "code": getattr(err, "code", None) or "UNKNOWN",
                "message": err.message if isinstance(err, OperationError) else str(err),
                "at": result.at,
            }
            remaining = self._executor.backoff_remaining(OperationKey(operation_key(name)))
            out["next_retry_seconds"] = round(remaining, 1)
        return out

    def claims(self) -> list[dict]:
        """One entry per claim of the desired state, and one per provisioned volume whose
        claim is gone (Released). ``status --json`` shows them as ``claims``."""
        out = self._claim_entries()
        for entry in out:
            entry.pop("static", None)
        return out

    def _claim_entries(self) -> list[dict]:
        snap = self._source.raw_snapshot()
        records = self._records.all()
        with self._cond:
            waiting = dict(self._last_waiting)
        out = []
        claim_uids = set()
        for claim in sorted(snap.pvcs.values(), key=lambda c: c.key):
            claim_uids.add(claim.uid)
            sc = cl.storage_class_of(claim, snap)
            name = claim.volume_name or cl.volume_name(claim)
            pv = snap.pvs.get(name) if claim.volume_name else (records.get(name) or snap.pvs.get(name))
            if pv is not None and not claim.volume_name and pv.annotations.get(dc.ANN_CLAIM_UID, claim.uid) != claim.uid:
                pv = None
            if claim.volume_name:
                phase = BOUND if pv is not None else LOST
            else:
                phase = BOUND if pv is not None else PENDING
            entry = _entry(claim.key, claim.uid, phase, pv, claim.request_bytes, claim.storage_class_name)
            entry["pv"] = entry["pv"] or claim.volume_name
            entry["static"] = bool(claim.volume_name)
            entry["waiting_for"] = waiting.get(name)
            if phase == PENDING and sc is None:
                entry["waiting_for"] = (f"StorageClass {claim.storage_class_name}" if claim.storage_class_name
                                        else "a volumeName or a storageClassName")
            entry.update(self._error_fields(name) if not claim.volume_name else
                         {"last_error": None, "next_retry_seconds": None, "in_progress": None})
            out.append(entry)
        for name, pv in sorted(records.items()):
            if pv.annotations.get(dc.ANN_CLAIM_UID) in claim_uids:
                continue
            ref = f"{pv.claim_ref[0]}/{pv.claim_ref[1]}" if pv.claim_ref else None
            entry = _entry(ref, pv.annotations.get(dc.ANN_CLAIM_UID), RELEASED, pv, None, pv.storage_class_name)
            entry["waiting_for"] = waiting.get(name)
            entry.update(self._error_fields(name))
            out.append(entry)
        return out

    def explain_claim(self, namespace: str, name: str, expansion_only: bool = False,
                      node_size: int | None = None) -> list[str]:
        """The controller's part of the chain for a pod volume on claim namespace/name.
        ``expansion_only``: only the expansion lines (a mounted volume's claim may be growing);
        ``node_size``: the filesystem size the node recorded for the volume (None: unknown)."""
        key = f"{namespace}/{name}"
        entry = next((c for c in self._claim_entries() if c["claim"] == key and c["phase"] != RELEASED), None)
        if entry is None or entry.pop("static", False):
            return []  # bound in the manifests: the node side says all there is
        if entry["phase"] == BOUND:
            line = f"claim {key} is Bound to persistentvolume {entry['pv']}"
            if entry.get("provisioned_by"):
                line += f" (volume {entry['volume_handle']}, provisioned by {entry['provisioned_by']})"
            more = self._explain_expansion(entry, node_size)
            return more if expansion_only else [line] + more
        if expansion_only:
            return []
        if entry["phase"] == LOST:
            return [f"claim {key} is Lost: its persistentvolume {entry['pv'] or '?'} does not exist"]
        lines = [f"claim {key} is Pending"] + self._data_source_lines(namespace, name)
        if entry["in_progress"]:
            lines.append(f"provisioning: {entry['in_progress']} in progress")
        err = entry["last_error"]
        if err is not None:
            lines.append(f"{err['operation']} failed with {err['code']}: {err['message']}")
            if entry["next_retry_seconds"] is not None and not entry["in_progress"]:
                lines.append(f"next retry in {entry['next_retry_seconds']:.1f} s")
        if entry["waiting_for"]:
            lines.append(f"waiting for {entry['waiting_for']}")
        elif err is None and not entry["in_progress"]:
            lines.append("provisioning: CreateVolume about to start")
        return lines


    def _explain_expansion(self, entry: dict, node_size: int | None = None) -> list[str]:
        """The expansion part of a Bound claim's chain: refused / ControllerExpandVolume failed
        CODE / in progress / waiting for NodeExpandVolume."""
        lines: list[str] = []
        want, have = entry.get("requested_bytes"), entry.get("capacity_bytes")
        err = entry.get("last_error")
        if err is not None and err.get("operation") == "ExpandVolume":
            return [f"expansion refused ({err['code']}): {err['message']}"]
        if entry.get("in_progress"):
            lines.append(f"expansion: {entry['in_progress']} in progress (to {want} bytes)")
        if err is not None and err.get("operation") in ("ControllerExpandVolume",):
            # Shown during its retry too: the last answer is what the operator needs.
            lines.append(f"{err['operation']} failed with {err['code']}: {err['message']}")
            if entry.get("next_retry_seconds") is not None and not entry.get("in_progress"):
                lines.append(f"next retry in {entry['next_retry_seconds']:.1f} s")
        if entry.get("waiting_for"):
            lines.append(f"expansion waiting for {entry['waiting_for']}")
        pv = self._records.get(entry["pv"]) if entry.get("pv") else None
        node_bytes = pv.annotations.get(dc.ANN_NODE_EXPAND_BYTES) if pv is not None else None
        if not lines and want is not None and have is not None and want > have:
            lines.append(f"expansion: ControllerExpandVolume to {want} bytes about to start (capacity {have})")
        if node_bytes and node_bytes.isdigit() and not lines and (node_size or 0) < int(node_bytes):
            lines.append(f"capacity {have} bytes: waiting for NodeExpandVolume to grow the filesystem to "
                         f"{node_bytes} bytes (online while staged, never unmounting; otherwise right after "
                         "the next stage)")
        return lines


def _entry(claim: str | None, uid: str | None, phase: str, pv: m.PersistentVolume | None,
           requested: int | None, storage_class: str | None) -> dict:
    src = pv.source if pv is not None else None
    return {
        "claim": claim,
        "claim_uid": uid,
        "phase": phase,
        "pv": pv.name if pv is not None else None,
        "volume_handle": src.volume_handle if isinstance(src, m.CSISource) else None,
        "driver": src.driver if isinstance(src, m.CSISource) else None,
        "requested_bytes": requested,
        "capacity_bytes": pv.capacity_bytes if pv is not None else None,
        "storage_class": storage_class or (pv.storage_class_name if pv is not None else None) or None,
        "reclaim_policy": pv.reclaim_policy if pv is not None else None,
        "provisioned_by": pv.annotations.get(ANN_PROVISIONED_BY) if pv is not None else None,
    }
