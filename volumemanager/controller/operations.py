"""The controller steps as operations: closures the executor runs, one key per volume.

Each step journals an fsync'd intent (``durable=True``) before its controller call and its
outcome after, and reports one of the typed errors, so backoff, ``status`` and ``explain``
treat it like a node step. A new step (ControllerPublish, ControllerExpand, CreateSnapshot)
is one more method here that returns a ``GeneratedOperation``, plus its action kind in
``decide`` and one line in ``ControllerReconciler._generate``.

Crash safety comes from the order: intent -> CreateVolume -> PV record (fsync'd) -> end.
A crash before the record is written leaves the claim without a record, so the next run
sends CreateVolume again with the same name, and the driver answers with the same volume
(the spec's idempotency rule); exactly one volume exists. DeleteVolume goes first and the
record is removed after it, so a crash in between re-sends DeleteVolume, which the spec makes
a success for a volume that is already gone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from operation_executor.errors import FinalError, UncertainError, WaitingError, is_uncertain
from operation_executor.generator import GeneratedOperation, as_operation_error, journaled, outcome_word
from operation_executor.journal import IntentJournal
from operation_executor.types import SecretRef
from operation_executor.use_guard import VolumeUseGuard
from volumemanager.controller import claims as cl
from volumemanager.controller import records as rec
from volumemanager.controller.decide import ControllerAction
from volumemanager.controller.lookups import SecretLookup, controller_client, secret_data
from volumemanager.manifests import models as m

log = logging.getLogger(__name__)

#: Steps that make something in the storage system (see ControllerOperations._journaled).
_CREATE_STEPS = frozenset({"CreateVolume", "CreateSnapshot"})

# Controller steps run in lanes of their own per driver, so a slow CreateVolume never holds up
# a node step (and the other way round).
LANE_PREFIX = "csi-controller:"


def operation_key(name: str) -> str:
    """The executor key of a controller step on volume ``name``: apart from the node's keys."""
    return f"controller/{name}"


class ControllerOperations:
    """Builds the controller steps from narrow dependencies: the driver registry (clients and
    what each driver is), the provisioned-volume records, the journal and a secret lookup."""

    def __init__(self, drivers: Any, records: rec.ProvisionedVolumes, journal: IntentJournal,
                 get_secret: SecretLookup, use_guard: VolumeUseGuard | None = None,
                 still_used: Callable[[str, str, str], bool] | None = None) -> None:
        self._drivers = drivers
        self._records = records
        self._journal = journal
        self._get_secret = get_secret
        # Shared with the node's mount operations: a DeleteVolume never overlaps one of them,
        # and looks at the node once more, (PV name, driver, handle) -> in use?, right before.
        self._use_guard = use_guard or VolumeUseGuard()
        self._still_used = still_used or (lambda name, driver, handle: False)
        # name -> (journal token, step) of creates whose answer was uncertain: kept open.
        self._open_creates: dict[str, list[tuple[object, str]]] = {}
        self._open_lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------

    def _client(self, driver: str) -> Any:
        return controller_client(self._drivers, driver)

    def _secrets(self, ref: SecretRef | None) -> dict[str, str]:
        return secret_data(self._get_secret, ref)

    def _journaled(self, step: str, name: str, details: Mapping[str, Any], fn: Callable[[], Any]) -> Any:
        """Journal ``step`` around ``fn``. A create whose answer is uncertain (a deadline, a
        lost reply, ABORTED while an earlier call still runs in the driver) may still make its
        volume or snapshot after we gave up on it: its intent stays open, so that a restart
        sends it again (and then deletes what it made, if nothing wants it any more) instead
        of forgetting it; the next answer for the same name closes it."""
        if step not in _CREATE_STEPS:
            return journaled(self._journal, step, operation_key(name), None, details, fn)
        token = self._journal.begin(step, operation_key(name), None, dict(details), durable=True, required=True)
        try:
            result = fn()
        except BaseException as e:
            if is_uncertain(e):
                with self._open_lock:
                    self._open_creates.setdefault(name, []).append((token, step))
            else:
                self._journal.end(token, outcome_word(e))
            raise
        self._journal.end(token, "ok")
        self.settle_creates(name)
        return result

    def settle_creates(self, name: str) -> None:
        """Close the intents of earlier uncertain creates of ``name``: a later answer (the
        create succeeded, or the volume was deleted) settled them."""
        with self._open_lock:
            held = self._open_creates.pop(name, [])
        for token, _ in held:
            self._journal.end(token, "ok")

    # --- provision ------------------------------------------------------------------------

    def provision(self, action: ControllerAction, claim: m.PersistentVolumeClaim,
                  sc: m.StorageClass) -> GeneratedOperation:
        def run() -> None:
            try:
                self._provision(claim, sc, action.content_source)
            except BaseException as e:
                raise as_operation_error(e, "CreateVolume") from None

        return GeneratedOperation("CreateVolume", run, LANE_PREFIX + action.driver)

    def _provision(self, claim: m.PersistentVolumeClaim, sc: m.StorageClass,
                   content_source: tuple[str, str] | None = None) -> None:
        from volumemanager.csi import client as node_client

        info = self._drivers.get(sc.provisioner)
        if info is None:
            raise WaitingError(f"CSI driver {sc.provisioner} is not registered",
                               waiting_for=f"CSI driver {sc.provisioner}")
        request = cl.build_request(claim, sc, "SINGLE_NODE_MULTI_WRITER" in info.controller_capabilities)
        client = self._client(sc.provisioner)
        secrets = self._secrets(request.secret_ref)
        caps = [node_client.volume_capability(block, node_client.csi_pb2.VolumeCapability.AccessMode.Mode.Value(mode),
                                              fs_type, flags)
                for block, mode, fs_type, flags in request.capabilities]
        topology: list[dict[str, str]] = []
        if "VOLUME_ACCESSIBILITY_CONSTRAINTS" in info.plugin_capabilities and info.topology:
            # One node: requisite = preferred = this node's segments (NodeGetInfo), as the
            # sidecar's strict topology does for a selected node.
            topology = [dict(info.topology)]
        details = {"name": request.name, "driver": request.driver, "claim": claim.key, "claim_uid": claim.uid,
                   "required_bytes": request.required_bytes, "request": request_record(claim, sc)}
        if content_source is not None:  # a restore or a clone: the same source again after a restart
            details["request"]["content_source"] = list(content_source)
        created = self._journaled("CreateVolume", request.name, details, lambda: client.create_volume(
            request.name, caps, request.required_bytes, request.parameters, secrets, topology, topology,
            content_source=content_source))
        capacity = created.capacity_bytes or request.required_bytes
        if request.required_bytes and capacity < request.required_bytes:
            # The sidecar deletes a volume smaller than asked and fails the claim.
            self._journaled("DeleteVolume", request.name, {"volume_id": created.volume_id, "driver": request.driver},
                            lambda: client.delete_volume(created.volume_id, secrets))
            raise FinalError(f"CreateVolume returned {capacity} bytes, less than the {request.required_bytes} "
                             "requested; the volume was deleted", code="CAPACITY_TOO_SMALL")
        doc = pv_document(claim, sc, request, created.volume_id, capacity, created.volume_context,
                          created.accessible_topology)
        try:
            self._records.write(doc)
        except OSError as e:
            # The volume exists; the next attempt re-sends CreateVolume and gets it again.
            raise UncertainError(f"writing the PersistentVolume record {self._records.path_of(request.name)}: "
                                 f"{e.strerror}", code="RECORD_WRITE_FAILED") from None
        log.info("provisioned %s for claim %s: volume %s, %d bytes", request.name, claim.key, created.volume_id,
                 capacity, extra={"volume": request.name, "claim": claim.key})

    # --- delete ---------------------------------------------------------------------------

    def delete(self, action: ControllerAction) -> GeneratedOperation:
        def run() -> None:
            try:
                self._delete(action.name)
            except BaseException as e:
                raise as_operation_error(e, "DeleteVolume") from None

        return GeneratedOperation("DeleteVolume", run, LANE_PREFIX + action.driver)

    def _delete(self, name: str) -> None:
        pv = self._records.get(name)
        if pv is None or not isinstance(pv.source, m.CSISource) or pv.source.volume_handle is None:
            return  # nothing of ours to delete (never a PV without our record)
        src = pv.source
        client = self._client(src.driver)
        ref = None
        sname = pv.annotations.get(rec.ANN_DELETION_SECRET_NAME)
        sns = pv.annotations.get(rec.ANN_DELETION_SECRET_NAMESPACE)
        if sname and sns:
            ref = SecretRef(sns, sname)
        secrets = self._secrets(ref)

        def call() -> None:
            try:
                client.delete_volume(src.volume_handle, secrets)
            except FinalError as e:
                if e.code != "NOT_FOUND":  # gone already: what DeleteVolume was for
                    raise

        with self._use_guard.deleting(name, lambda: self._still_used(name, src.driver, src.volume_handle)):
            self._journaled("DeleteVolume", name, {"volume_id": src.volume_handle, "driver": src.driver}, call)
        self.settle_creates(name)
        self._records.remove(name)
        log.info("deleted volume %s (%s)", name, src.volume_handle, extra={"volume": name})


    # --- expand ---------------------------------------------------------------------------

    def expand(self, action: ControllerAction, claim: m.PersistentVolumeClaim, sc: m.StorageClass | None,
               controller: bool) -> GeneratedOperation:
        """ControllerExpandVolume (``controller``) or the trivial resizer (no controller call:
        the node's NodeExpandVolume does it all), then the PV record's new capacity."""
        operation = "ControllerExpandVolume" if controller else "ExpandVolume"

        def run() -> None:
            try:
                self._expand(action.name, claim, sc, controller)
            except BaseException as e:
                raise as_operation_error(e, operation) from None

        return GeneratedOperation(operation, run, LANE_PREFIX + action.driver)

    def _expand(self, name: str, claim: m.PersistentVolumeClaim, sc: m.StorageClass | None, controller: bool) -> None:
        pv = self._records.get(name)
        if pv is None or not isinstance(pv.source, m.CSISource) or not pv.source.volume_handle:
            return  # deleted meanwhile
        src = pv.source
        want = int(claim.request_bytes or 0)
        if want <= int(pv.capacity_bytes or 0):
            return  # done meanwhile
        try:
            doc = self._records.document(name)
        except (OSError, ValueError) as e:
            raise UncertainError(f"reading the PersistentVolume record {self._records.path_of(name)}: {e}",
                                 code="RECORD_READ_FAILED") from None
        if controller:
            client = self._client(src.driver)
            ref = _secret_param(sc, "controller-expand", claim, name) if sc is not None else None
            secrets = self._secrets(ref)
            capability = _capability_of(pv, self._drivers.get(src.driver))
            details = {"volume_id": src.volume_handle, "driver": src.driver, "claim": claim.key,
                       "required_bytes": want, "capacity_bytes": pv.capacity_bytes}
            answer = self._journaled("ControllerExpandVolume", name, details, lambda: client.controller_expand_volume(
                src.volume_handle, want, capability, secrets))
            capacity = max(answer.capacity_bytes or want, want)
            node_required = answer.node_expansion_required
        else:
            # The trivial resizer (external-resizer's for drivers with only the node
            # EXPAND_VOLUME): the PV says the new size and the node grows the volume.
            capacity, node_required = want, True
        spec = doc.setdefault("spec", {})
        spec.setdefault("capacity", {})["storage"] = str(capacity)
        annotations = doc.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[rec.ANN_REQUESTED_BYTES] = str(want)
        if node_required:
            annotations[rec.ANN_NODE_EXPAND_BYTES] = str(capacity)
        try:
            self._records.write(doc)
        except OSError as e:
            # The volume grew; the next attempt sends the same request (idempotent) and writes again.
            raise UncertainError(f"writing the PersistentVolume record {self._records.path_of(name)}: "
                                 f"{e.strerror}", code="RECORD_WRITE_FAILED") from None
        log.info("expanded %s for claim %s to %d bytes%s", name, claim.key, capacity,
                 "; NodeExpandVolume follows on the node" if node_required else "",
                 extra={"volume": name, "claim": claim.key})


def _secret_param(sc: m.StorageClass, op: str, claim: m.PersistentVolumeClaim, pv_name: str) -> SecretRef | None:
    """The ``csi.storage.k8s.io/<op>-secret-name``/``-namespace`` reference of a class."""
    sname = sc.parameters.get(f"{cl.PREFIX}{op}-secret-name")
    sns = sc.parameters.get(f"{cl.PREFIX}{op}-secret-namespace")
    if not sname and not sns:
        return None
    if not sname or not sns:
        raise FinalError(f"StorageClass {sc.name}: {cl.PREFIX}{op}-secret-name and -namespace must be given together",
                         code="INVALID_PARAMETER")
    return SecretRef(cl._resolve_template(sns, claim, pv_name, op, False),
                     cl._resolve_template(sname, claim, pv_name, op, True))


def _capability_of(pv: m.PersistentVolume, info: Any) -> Any:
    """The PV's volume capability (its first access mode), as the resizer sends it."""
    from volumemanager.csi import client as node_client

    snmw = info is not None and "SINGLE_NODE_MULTI_WRITER" in info.controller_capabilities
    table = cl._ACCESS_SNMW if snmw else cl._ACCESS
    mode = table.get((pv.access_modes or ("ReadWriteOnce",))[0], "SINGLE_NODE_WRITER")
    block = pv.volume_mode == m.BLOCK
    fs_type = "" if block else (pv.source.fs_type or "")
    return node_client.volume_capability(block, node_client.csi_pb2.VolumeCapability.AccessMode.Mode.Value(mode),
                                         fs_type, () if block else tuple(pv.mount_options))


def pv_document(claim: m.PersistentVolumeClaim, sc: m.StorageClass, request: cl.ProvisionRequest, volume_id: str,
                capacity: int, volume_context: Mapping[str, str],
                accessible_topology: tuple[dict[str, str], ...]) -> dict[str, Any]:
    """The PersistentVolume the sidecar and the PV binder would have made for the claim."""
    annotations = {
        rec.ANN_PROVISIONED_BY: sc.provisioner,
        rec.ANN_PROVISIONED_BY_ISSUE: sc.provisioner,
        rec.ANN_CLAIM_UID: claim.uid,
        rec.ANN_DELETION_SECRET_NAME: request.secret_ref.name if request.secret_ref else "",
        rec.ANN_DELETION_SECRET_NAMESPACE: request.secret_ref.namespace if request.secret_ref else "",
        "volumemanager.io/provisioned-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if request.required_bytes:
        annotations[rec.ANN_REQUESTED_BYTES] = str(request.required_bytes)
    csi: dict[str, Any] = {"driver": sc.provisioner, "volumeHandle": volume_id,
                           "volumeAttributes": dict(volume_context)}
    if request.fs_type:
        csi["fsType"] = request.fs_type
    for key, field in (("node-stage", "nodeStageSecretRef"), ("node-publish", "nodePublishSecretRef"),
                       ("node-expand", "nodeExpandSecretRef"),
                       ("controller-publish", "controllerPublishSecretRef")):
        sname = sc.parameters.get(f"{cl.PREFIX}{key}-secret-name")
        sns = sc.parameters.get(f"{cl.PREFIX}{key}-secret-namespace")
        if sname and sns:
            csi[field] = {"name": cl._resolve_template(sname, claim, request.name, key, True),
                          "namespace": cl._resolve_template(sns, claim, request.name, key, False)}
    spec: dict[str, Any] = {
        "accessModes": list(claim.access_modes or ("ReadWriteOnce",)),
        "capacity": {"storage": str(capacity)},
        "csi": csi,
        "persistentVolumeReclaimPolicy": sc.reclaim_policy,
        "storageClassName": sc.name,
        "volumeMode": claim.volume_mode or m.FILESYSTEM,
        "claimRef": {"namespace": claim.namespace, "name": claim.name, "uid": claim.uid},
    }
    if sc.mount_options:
        spec["mountOptions"] = list(sc.mount_options)
    if accessible_topology:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(t.items())]}
            for t in accessible_topology]}}
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": request.name, "annotations": annotations}, "spec": spec}


def request_record(claim: m.PersistentVolumeClaim, sc: m.StorageClass) -> dict[str, Any]:
    """What the CreateVolume intent keeps to send the same request after a restart, when the
    claim is gone by then (no secret values: the class holds secret *names* only)."""
    return {
        "claim": {"namespace": claim.namespace, "name": claim.name, "uid": claim.uid,
                  "access_modes": list(claim.access_modes), "volume_mode": claim.volume_mode,
                  "request_bytes": claim.request_bytes, "storage_class_name": claim.storage_class_name},
        "class": {"name": sc.name, "provisioner": sc.provisioner, "parameters": dict(sc.parameters),
                  "reclaim_policy": sc.reclaim_policy, "volume_binding_mode": sc.volume_binding_mode,
                  "mount_options": list(sc.mount_options)},
    }


def from_request_record(data: Mapping[str, Any]) -> tuple[m.PersistentVolumeClaim, m.StorageClass]:
    """The claim and class of ``request_record``; ``KeyError``/``TypeError`` for a bad record."""
    c, k = data["claim"], data["class"]
    origin = m.Origin("intent journal", 1)
    claim = m.PersistentVolumeClaim(str(c["namespace"]), str(c["name"]), None, c.get("volume_mode"),
                                    tuple(c.get("access_modes") or ()), origin, uid=str(c["uid"]),
                                    storage_class_name=c.get("storage_class_name"),
                                    request_bytes=c.get("request_bytes"))
    sc = m.StorageClass(str(k["name"]), str(k["provisioner"]), dict(k.get("parameters") or {}),
                        str(k.get("reclaim_policy") or "Delete"), str(k.get("volume_binding_mode") or "Immediate"),
                        False, tuple(k.get("mount_options") or ()), (), origin)
    return claim, sc
