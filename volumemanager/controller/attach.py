"""Attach and detach (issue 14, item 4): ControllerPublishVolume before the first NodeStage,
ControllerUnpublishVolume after the last NodeUnstage, for the CSI PVs of a driver with the
PUBLISH_UNPUBLISH_VOLUME controller capability (unless its CSIDriver says
``attachRequired: false``).

This is the kubelet's attach/detach controller with the external-attacher, on one host. The
attachment is a controller step like provisioning (key ``controller/<pv>``, so an attach, a
detach and a DeleteVolume of one volume never overlap and never run twice at once); the node's
mount operation waits for it (``WaitingError`` "waiting for ControllerPublishVolume of X"),
exactly as a kubelet in a cluster waits for its VolumeAttachment. The CSI plugin reads the
``publish_context`` through one narrow lookup (``AttachController.publish_context``).

Crash safety comes from a record per attachment, ``<root>/state/attachments/<pv>.json``
(fsync'd, renamed into place), written **before** ControllerPublishVolume with the state
``attaching`` and rewritten ``attached`` with the publish_context after it. A record that is
not ``attached`` is an unpublish owed: after a crash, a timeout or any other unknown outcome
the volume counts as attached for cleanup; if still wanted it is published again (the call is
idempotent), otherwise unpublished. The record goes only after ControllerUnpublishVolume
succeeded, which is decided only when the volume is neither wanted, staged nor mounted on the
node (never under a mount: a real driver would pull the disk from a live filesystem).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from operation_executor.errors import FinalError, OperationError, WaitingError, is_uncertain
from operation_executor.executor import OperationKey, OperationOutcome
from operation_executor.generator import GeneratedOperation, as_operation_error, journaled
from operation_executor.types import BLOCK, SecretRef, VolumeSpec
from volumemanager.controller.durable import TMP_SUFFIX, remove_durably, write_durably
from volumemanager.controller.lookups import controller_client, secret_data

log = logging.getLogger(__name__)

ATTACH = "attach"
DETACH = "detach"
PUBLISH_UNPUBLISH_VOLUME = "PUBLISH_UNPUBLISH_VOLUME"
PUBLISH_CALL = "ControllerPublishVolume"
UNPUBLISH_CALL = "ControllerUnpublishVolume"
KEY_PREFIX = "controller/"
LANE_PREFIX = "csi-controller:"

ATTACHING = "attaching"  # ControllerPublishVolume sent, outcome not known: an unpublish is owed
ATTACHED = "attached"

RECORDS_DIR = "attachments"
SUFFIX = ".json"


# --- values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttachTarget:
    """A CSI PV the node wants (a desired pod uses it): what ControllerPublishVolume needs."""

    name: str  # the PV name: the record's and the operation key's name
    driver: str
    volume_handle: str
    readonly: bool
    block: bool = False
    access_modes: tuple[str, ...] = ()
    fs_type: str = ""
    mount_options: tuple[str, ...] = ()
    volume_context: Mapping[str, str] = field(default_factory=dict)
    secret_ref: SecretRef | None = None


@dataclass(frozen=True)
class Attachment:
    """One record of ``state/attachments/``."""

    name: str
    driver: str
    volume_handle: str
    node_id: str
    state: str  # attaching | attached
    readonly: bool = False
    publish_context: Mapping[str, str] = field(default_factory=dict)
    secret_ref: SecretRef | None = None
    since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "driver": self.driver, "volume_handle": self.volume_handle,
                "node_id": self.node_id, "state": self.state, "readonly": self.readonly,
                "publish_context": dict(self.publish_context), "since": self.since,
                "secret_ref": ({"namespace": self.secret_ref.namespace, "name": self.secret_ref.name}
                               if self.secret_ref else None)}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Attachment:
        ref = data.get("secret_ref")
        return Attachment(str(data["name"]), str(data["driver"]), str(data["volume_handle"]),
                          str(data.get("node_id") or ""), str(data.get("state") or ATTACHING),
                          bool(data.get("readonly")),
                          {str(k): str(v) for k, v in (data.get("publish_context") or {}).items()},
                          SecretRef(str(ref["namespace"]), str(ref["name"])) if ref else None,
                          float(data.get("since") or 0.0))


@dataclass(frozen=True)
class AttachAction:
    kind: str  # attach | detach
    name: str
    driver: str
    detail: str
    target: AttachTarget | None = None  # attach only

    def to_dict(self, blocked_by: str | None = None) -> dict:
        return {"action": self.kind, "volume_id": self.name, "pod": None, "pod_uid": None,
                "volume": self.name, "plugin": self.driver, "detail": self.detail, "blocked_by": blocked_by}


@dataclass
class AttachDecision:
    actions: list[AttachAction] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)


# --- the pure decision ------------------------------------------------------------------


def needs_attach(driver: str, publish_drivers: frozenset[str], not_required: frozenset[str]) -> bool:
    """The kubelet's rule: attachable when the driver can ControllerPublish and no CSIDriver
    object says ``attachRequired: false``."""
    return driver in publish_drivers and driver not in not_required


def decide_attach(
    wanted: Mapping[str, AttachTarget],
    records: Mapping[str, Attachment],
    registered: frozenset[str],
    publish_drivers: frozenset[str],
    not_required: frozenset[str],
    in_use: frozenset[tuple[str, str]],
    ready_to_detach: bool,
) -> AttachDecision:
    """Attach each wanted volume of an attachable driver that has no ``attached`` record;
    detach each record whose volume is neither wanted nor used on the node (``in_use``:
    (driver, handle) pairs staged or mounted; a pair ``("*", "*")`` means "cannot tell"), once
    the desired state has been read whole. Reads nothing, starts nothing."""
    out = AttachDecision()
    wanted_handles = {(t.driver, t.volume_handle) for t in wanted.values()}
    by_handle = {(r.driver, r.volume_handle): r for r in records.values()}
    for name, target in sorted(wanted.items()):
        if not needs_attach(target.driver, publish_drivers, not_required):
            continue  # nothing to attach (or the driver is not there yet: the node step waits for it)
        record = records.get(name) or by_handle.get((target.driver, target.volume_handle))
        if record is not None and record.state == ATTACHED:
            continue  # attached (maybe under another PV name of the same volume): once per volume
        again = " again (its last outcome is unknown)" if record is not None else ""
        out.actions.append(AttachAction(ATTACH, name, target.driver,
                                        f"{PUBLISH_CALL} {target.volume_handle}{again}", target))
    for name, record in sorted(records.items()):
        if name in wanted or (record.driver, record.volume_handle) in wanted_handles:
            continue
        if not ready_to_detach:
            out.waiting[name] = "the desired state to be read whole (nothing is detached until then)"
        elif ("*", "*") in in_use or (record.driver, record.volume_handle) in in_use:
            out.waiting[name] = "the node to stop using the volume (NodeUnpublish and NodeUnstage first)"
        elif record.driver not in registered:
            out.waiting[name] = f"CSI driver {record.driver} (with its Controller service) to register"
        else:
            out.actions.append(AttachAction(DETACH, name, record.driver,
                                            f"{UNPUBLISH_CALL} {record.volume_handle} from node {record.node_id}"))
    return out


def hold_deletes(actions: list[Any], waiting: dict[str, str], attached: Iterable[str],
                 delete_kind: str = "delete") -> list[Any]:
    """DeleteVolume only after ControllerUnpublishVolume: drop the delete actions of volumes
    that still have an attachment record (they wait for the detach)."""
    held = set(attached)
    out = []
    for action in actions:
        if action.kind == delete_kind and action.name in held:
            waiting[action.name] = f"{UNPUBLISH_CALL} of {action.name} first (the volume is attached to this node)"
            continue
        out.append(action)
    return out


def target_of(spec: VolumeSpec) -> AttachTarget | None:
    """The attach target of a desired volume's spec: CSI PVs only (a handle and a PV name)."""
    src = spec.source
    handle = getattr(src, "volume_handle", None)
    driver = getattr(src, "driver", None)
    if not handle or not driver or not spec.pv_name:
        return None
    modes = tuple(spec.access_modes)
    # external-attacher: read-only when the PV's csi.readOnly says so or the volume is ROX.
    readonly = bool(getattr(src, "read_only", False)) or (bool(modes) and set(modes) == {"ReadOnlyMany"})
    return AttachTarget(spec.pv_name, driver, handle, readonly, spec.volume_mode == BLOCK, modes,
                        getattr(src, "fs_type", None) or "", tuple(spec.mount_options),
                        dict(getattr(src, "volume_attributes", None) or {}),
                        getattr(src, "controller_publish_secret_ref", None))


# --- the records ------------------------------------------------------------------------


class AttachmentRecords:
    """Thread-safe store of ``<state>/attachments/<pv>.json``, every change fsync'd."""

    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, RECORDS_DIR)
        self._lock = threading.Lock()
        self._records: dict[str, Attachment] = {}

    def path_of(self, name: str) -> str:
        return os.path.join(self.directory, name + SUFFIX)

    def load(self) -> None:
        """Read every record (at start). One that does not parse stays on disk, logged: it may
        be the only trace of an attachment."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        found: dict[str, Attachment] = {}
        for entry in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, entry)
            if entry.endswith(TMP_SUFFIX):
                os.unlink(path)  # a write cut short before its rename: the old record stands
                continue
            if not entry.endswith(SUFFIX):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    att = Attachment.from_json(json.load(f))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("attachment record %s cannot be read (left in place): %s", path, e)
                continue
            if att.name + SUFFIX != entry:
                log.error("attachment record %s names volume %s (left in place)", path, att.name)
                continue
            found[att.name] = att
        with self._lock:
            self._records = found

    def all(self) -> dict[str, Attachment]:
        with self._lock:
            return dict(self._records)

    def count(self) -> int:
        """How many records (O(1))."""
        with self._lock:
            return len(self._records)

    def get(self, name: str) -> Attachment | None:
        with self._lock:
            return self._records.get(name)

    def find(self, driver: str, handle: str) -> Attachment | None:
        with self._lock:
            return next((a for a in self._records.values() if a.driver == driver and a.volume_handle == handle),
                        None)

    def write(self, att: Attachment) -> None:
        """Durably: temp file, fsync, rename, fsync of the directory. Raises ``OSError``."""
        write_durably(self.path_of(att.name), json.dumps(att.to_json(), indent=2, sort_keys=True).encode() + b"\n")
        with self._lock:
            self._records[att.name] = att

    def remove(self, name: str) -> None:
        remove_durably(self.path_of(name))
        with self._lock:
            self._records.pop(name, None)


# --- the controller side ----------------------------------------------------------------


@dataclass
class _Result:
    operation: str
    error: BaseException | None
    at: float


class AttachController:
    """Decides, runs and answers for attachments. Narrow dependencies: the driver registry
    (node id, capabilities, controller clients), the records, the journal, a secret lookup,
    the specs the node wants, the (driver, handle) pairs it uses, whether the desired state is
    read whole, and which drivers a CSIDriver object marks ``attachRequired: false``."""

    def __init__(
        self,
        drivers: Any,
        records: AttachmentRecords,
        journal: Any,
        get_secret: Callable[[SecretRef], Mapping[str, Any] | None],
        wanted_specs: Callable[[], Iterable[VolumeSpec]],
        in_use: Callable[[], tuple[frozenset[str], frozenset[tuple[str, str]]]],
        ready_to_detach: Callable[[], bool],
        attach_not_required: Callable[[], frozenset[str]],
        executor: Any,
    ) -> None:
        self._drivers = drivers
        self.records = records
        self._journal = journal
        self._get_secret = get_secret
        self._wanted_specs = wanted_specs
        self._in_use = in_use
        self._ready = ready_to_detach
        self._not_required = attach_not_required
        self._executor = executor
        self._lock = threading.Lock()
        self._results: dict[str, _Result] = {}
        self._waiting: dict[str, str] = {}
        # Called after every ControllerPublishVolume outcome: the node's waiting mounts look again.
        self.on_attach_outcome: list[Callable[[], None]] = []
        executor.add_completion_callback(self._on_complete)

    # --- inputs -------------------------------------------------------------------------

    def _publish_drivers(self) -> tuple[frozenset[str], frozenset[str]]:
        infos = self._drivers.list()
        return (frozenset(d.name for d in infos),
                frozenset(d.name for d in infos if d.controller_endpoint is not None
                          and PUBLISH_UNPUBLISH_VOLUME in d.controller_capabilities))

    def _wanted(self) -> dict[str, AttachTarget]:
        out: dict[str, AttachTarget] = {}
        for spec in self._wanted_specs():
            target = target_of(spec) if spec is not None else None
            if target is not None:
                out.setdefault(target.name, target)
        return out

    def decision(self) -> AttachDecision:
        records = self.records.all()
        registered, publish = self._publish_drivers()
        if not records and not publish:
            # No driver attaches and nothing is attached: nothing to decide, and no walk over
            # the desired volumes (this runs on every wake of the controller).
            with self._lock:
                self._waiting = {}
            return AttachDecision()
        wanted = self._wanted()
        in_use: frozenset[tuple[str, str]] = frozenset()
        if any(n not in wanted for n in records):  # a detach is possible: look at the node
            names, handles = self._in_use()
            in_use = frozenset({("*", "*")}) if "*" in names else handles
        decision = decide_attach(wanted, records, registered, publish, self._not_required(), in_use, self._ready())
        with self._lock:
            self._waiting = dict(decision.waiting)
        return decision

    # --- the node's lookup ----------------------------------------------------------------

    def publish_context(self, driver: str, volume_handle: str, pv_name: str | None = None) -> dict[str, str]:
        """What NodeStage/NodePublish of the volume carry as ``publish_context``: {} when the
        volume needs no attach; raises ``WaitingError`` until ControllerPublishVolume succeeded."""
        _, publish = self._publish_drivers()
        if not needs_attach(driver, publish, self._not_required()):
            return {}
        record = self.records.find(driver, volume_handle)
        if record is not None and record.state == ATTACHED:
            return dict(record.publish_context)
        name = (record.name if record is not None else None) or pv_name or volume_handle
        waiting_for = f"{PUBLISH_CALL} of {name}"
        detail = "attaching the volume to this node"
        with self._lock:
            result = self._results.get(name)
        if self._executor.pending_operation(KEY_PREFIX + name) is not None:
            detail = f"{PUBLISH_CALL} in progress"
        elif result is not None and result.error is not None and result.operation == PUBLISH_CALL:
            err = result.error
            detail = f"{PUBLISH_CALL} failed with {_code(err)}: {_message(err)}"
            remaining = self._executor.backoff_remaining(OperationKey(KEY_PREFIX + name))
            if remaining > 0:
                detail += f" (next retry in {remaining:.1f} s)"
        raise WaitingError(f"waiting for {waiting_for}: {detail}", waiting_for=waiting_for, code="WAITING_FOR_ATTACH")

    # --- operations -----------------------------------------------------------------------

    def _on_complete(self, outcome: OperationOutcome) -> None:
        key = outcome.key.volume_id
        if not key.startswith(KEY_PREFIX) or outcome.operation not in (PUBLISH_CALL, UNPUBLISH_CALL):
            return
        with self._lock:
            self._results[key[len(KEY_PREFIX):]] = _Result(outcome.operation, outcome.error, time.time())
        if outcome.operation == PUBLISH_CALL:
            for callback in list(self.on_attach_outcome):
                try:
                    callback()
                except Exception:  # noqa: BLE001 - a broken hook must not break the executor
                    log.exception("attach outcome hook failed")

    def _client(self, driver: str) -> Any:
        return controller_client(self._drivers, driver)

    def _secrets(self, ref: SecretRef | None) -> dict[str, str]:
        return secret_data(self._get_secret, ref)

    def _journaled(self, step: str, name: str, details: Mapping[str, Any], fn: Callable[[], Any]) -> Any:
        return journaled(self._journal, step, KEY_PREFIX + name, None, details, fn)

    def operation(self, action: AttachAction) -> GeneratedOperation:
        step = self._attach if action.kind == ATTACH else self._detach
        call = PUBLISH_CALL if action.kind == ATTACH else UNPUBLISH_CALL

        def run() -> None:
            try:
                step(action)
            except BaseException as e:
                raise as_operation_error(e, call) from None

        return GeneratedOperation(call, run, LANE_PREFIX + action.driver)

    def _attach(self, action: AttachAction) -> None:
        from volumemanager.csi import client as node_client

        target = action.target
        assert target is not None
        info = self._drivers.get(target.driver)
        if info is None:
            raise WaitingError(f"CSI driver {target.driver} is not registered", waiting_for=f"CSI driver {target.driver}")
        client = self._client(target.driver)
        secrets = self._secrets(target.secret_ref)
        capability = node_client.volume_capability(
            target.block, node_client.access_mode(target.access_modes, "SINGLE_NODE_MULTI_WRITER" in info.capabilities),
            target.fs_type, target.mount_options)
        before = self.records.get(target.name)
        node_id = before.node_id if before is not None and before.node_id else info.node_id
        # The record first: from here on an unpublish is owed, whatever happens to this process.
        self.records.write(Attachment(target.name, target.driver, target.volume_handle, node_id, ATTACHING,
                                      target.readonly, {}, target.secret_ref, time.time()))
        details = {"volume_id": target.volume_handle, "driver": target.driver, "node_id": node_id,
                   "readonly": target.readonly}
        try:
            context = self._journaled(PUBLISH_CALL, target.name, details, lambda: client.controller_publish_volume(
                target.volume_handle, node_id, capability, target.readonly, secrets, target.volume_context))
        except FinalError:
            if before is None:
                # The driver answered: certainly not attached by this first attempt.
                self.records.remove(target.name)
            raise
        self.records.write(Attachment(target.name, target.driver, target.volume_handle, node_id, ATTACHED,
                                      target.readonly, context, target.secret_ref, time.time()))
        log.info("attached %s (%s) to node %s", target.name, target.volume_handle, node_id,
                 extra={"volume": target.name})

    def _detach(self, action: AttachAction) -> None:
        record = self.records.get(action.name)
        if record is None:
            return
        client = self._client(record.driver)
        secrets = self._secrets(record.secret_ref)

        def call() -> None:
            try:
                client.controller_unpublish_volume(record.volume_handle, record.node_id, secrets)
            except FinalError as e:
                if e.code != "NOT_FOUND":  # the volume is gone: nothing is attached
                    raise

        self._journaled(UNPUBLISH_CALL, record.name, {"volume_id": record.volume_handle, "driver": record.driver,
                                                      "node_id": record.node_id}, call)
        self.records.remove(record.name)
        log.info("detached %s (%s) from node %s", record.name, record.volume_handle, record.node_id,
                 extra={"volume": record.name})

    # --- answering ------------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """``status --json`` ``attachments``: one entry per attachment record."""
        out = []
        with self._lock:
            results, waiting = dict(self._results), dict(self._waiting)
        for name, att in sorted(self.records.all().items()):
            key = KEY_PREFIX + name
            result = results.get(name)
            err = result.error if result is not None else None
            last_error = None
            next_retry = None
            if err is not None and not isinstance(err, WaitingError):
                last_error = {"operation": result.operation, "code": _code(err), "message": _message(err),
                              "at": result.at}
                next_retry = round(self._executor.backoff_remaining(OperationKey(key)), 1)
            out.append({
                "volume": name, "driver": att.driver, "volume_handle": att.volume_handle, "node_id": att.node_id,
                "state": att.state, "readonly": att.readonly, "publish_context": dict(att.publish_context),
                "since": att.since, "in_progress": self._executor.pending_operation(key),
                "waiting_for": waiting.get(name), "last_error": last_error, "next_retry_seconds": next_retry,
            })
        return out


def _code(err: BaseException) -> str:
    return getattr(err, "code", None) or ("UNCERTAIN" if is_uncertain(err) else "UNKNOWN")


def _message(err: BaseException) -> str:
    return err.message if isinstance(err, OperationError) else str(err)
