"""The snapshot steps as executor operations (key ``controller/snapshot-<uid>``, lane per driver).

Built on ``ControllerOperations``' plumbing (client lookup, secrets by reference, the
journaled call), so a snapshot step is journaled, typed and backed off like CreateVolume.

Crash safety comes from the order, as for volumes: intent -> CreateSnapshot -> record (fsync'd)
-> end. A crash before the record leaves the VolumeSnapshot without one, so the next run sends
CreateSnapshot with the same name and the driver answers with the same snapshot: exactly one
exists. DeleteSnapshot goes first and the record is removed after it; a crash in between re-sends
DeleteSnapshot, which the spec makes a success for a snapshot that is already gone.

A snapshot that is not ready to use is recorded (ready false) and the step ends with
``SNAPSHOT_NOT_READY`` (a transient error: the executor's backoff paces the next
CreateSnapshot, which is how external-snapshotter follows it too).
"""

from __future__ import annotations

import logging
from typing import Callable

from operation_executor.errors import FinalError, TransientError, UncertainError
from operation_executor.generator import GeneratedOperation, as_operation_error
from operation_executor.types import SecretRef
from volumemanager.controller.decide import ControllerAction
from volumemanager.controller.operations import LANE_PREFIX, ControllerOperations
from volumemanager.controller.snapshot_records import SnapshotRecord, SnapshotRecords
from volumemanager.controller.snapshots import SnapshotRequest

log = logging.getLogger(__name__)

NOT_READY = "SNAPSHOT_NOT_READY"


class SnapshotOperations:
    def __init__(self, base: ControllerOperations, records: SnapshotRecords) -> None:
        self._base = base
        self._records = records

    def create(self, action: ControllerAction, build: Callable[[], SnapshotRequest]) -> GeneratedOperation:
        """``build`` makes the request inside the step, so a class the sidecar would refuse is
        the step's FinalError (shown, backed off), never an exception in the controller loop."""

        def run() -> None:
            try:
                self._create(build())
            except BaseException as e:
                raise as_operation_error(e, "CreateSnapshot") from None

        return GeneratedOperation("CreateSnapshot", run, LANE_PREFIX + action.driver)

    def _create(self, req: SnapshotRequest) -> None:
        client = self._base._client(req.driver)
        secrets = self._base._secrets(req.secret_ref)
        details = {"name": req.name, "driver": req.driver, "source_volume_id": req.source_volume_id,
                   "snapshot": f"{req.namespace}/{req.snapshot}", "uid": req.uid, "source_claim": req.source_claim,
                   "request": req.to_record_dict()}
        created = self._base._journaled("CreateSnapshot", req.name, details, lambda: client.create_snapshot(
            req.name, req.source_volume_id, req.parameters, secrets))
        if not created.snapshot_id:
            raise FinalError(f"CreateSnapshot {req.name} answered without a snapshot_id", code="INVALID_RESPONSE")
        ref = req.secret_ref or SecretRef("", "")
        record = SnapshotRecord(
            name=req.name, namespace=req.namespace, snapshot=req.snapshot, uid=req.uid,
            source_claim=req.source_claim, source_pv=req.source_pv, source_volume_id=req.source_volume_id,
            driver=req.driver, snapshot_class=req.snapshot_class, deletion_policy=req.deletion_policy,
            snapshot_id=created.snapshot_id, ready_to_use=created.ready_to_use,
            restore_size_bytes=created.size_bytes or None, creation_time=created.creation_time,
            secret_name=ref.name, secret_namespace=ref.namespace, parameters=dict(req.parameters))
        try:
            self._records.write(record)
        except OSError as e:
            # The snapshot exists; the next attempt sends CreateSnapshot again and gets it again.
            raise UncertainError(f"writing the snapshot record {self._records.path_of(req.name)}: {e.strerror}",
                                 code="RECORD_WRITE_FAILED") from None
        if not created.ready_to_use:
            raise TransientError(f"snapshot {created.snapshot_id} is not ready to use yet; CreateSnapshot is sent "
                                 "again to follow it", code=NOT_READY)
        log.info("snapshot %s of %s (volumesnapshot %s/%s) is ready: %s", req.name, req.source_claim,
                 req.namespace, req.snapshot, created.snapshot_id, extra={"volume": req.name})

    def delete(self, action: ControllerAction) -> GeneratedOperation:
        def run() -> None:
            try:
                self._delete(action.name)
            except BaseException as e:
                raise as_operation_error(e, "DeleteSnapshot") from None

        return GeneratedOperation("DeleteSnapshot", run, LANE_PREFIX + action.driver)

    def _delete(self, name: str) -> None:
        rec = self._records.get(name)
        if rec is None:
            return  # never a snapshot without our record
        client = self._base._client(rec.driver)
        ref = SecretRef(rec.secret_namespace, rec.secret_name) if rec.secret_name and rec.secret_namespace else None
        secrets = self._base._secrets(ref)

        def call() -> None:
            try:
                client.delete_snapshot(rec.snapshot_id, secrets)
            except FinalError as e:
                if e.code != "NOT_FOUND":  # gone already: what DeleteSnapshot was for
                    raise

        self._base._journaled("DeleteSnapshot", name, {"snapshot_id": rec.snapshot_id, "driver": rec.driver}, call)
        self._base.settle_creates(name)
        self._records.remove(name)
        log.info("deleted snapshot %s (%s)", name, rec.snapshot_id, extra={"volume": name})
