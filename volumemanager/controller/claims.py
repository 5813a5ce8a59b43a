"""Claims as the provisioner sees them, and the CreateVolume request for one (pure functions).

Everything here follows external-provisioner (``ep: pkg/controller/controller.go``), so a
driver written for Kubernetes gets the request it expects:

* the volume's name, which is also the PV's, is ``pvc-<claim uid>``: deterministic, so a retry
  or a restart after a crash sends the same name and the driver's idempotency rule returns the
  same volume instead of a second one;
* ``capacity_range.required_bytes`` is the claim's storage request (no limit);
* one capability per access mode, ``block`` for volumeMode Block, else ``mount`` with the
  ``csi.storage.k8s.io/fstype`` parameter and the StorageClass's mountOptions;
* parameters are the StorageClass's minus the ``csi.storage.k8s.io/`` keys the sidecar strips;
  any other key under that prefix is refused, as the sidecar does;
* secrets from ``csi.storage.k8s.io/provisioner-secret-name``/``-namespace`` (falling back to
  ``secret-name``/``secret-namespace``), with the ``${pvc.name}``, ``${pvc.namespace}`` and
  ``${pv.name}`` templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from operation_executor.errors import FinalError
from operation_executor.types import SecretRef
from volumemanager.manifests import models as m

PREFIX = "csi.storage.k8s.io/"
FSTYPE_KEY = PREFIX + "fstype"
# The keys the sidecar strips before CreateVolume (removePrefixedParameters).
_SECRET_OPS = ("provisioner", "controller-publish", "node-stage", "node-publish", "controller-expand",
               "node-expand", "controller-modify")
STRIPPED_KEYS = frozenset(
    [FSTYPE_KEY, PREFIX + "secret-name", PREFIX + "secret-namespace"]
    + [f"{PREFIX}{op}-secret-{part}" for op in _SECRET_OPS for part in ("name", "namespace")]
)
VOLUME_NAME_PREFIX = "pvc"
IMMEDIATE = "Immediate"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"

_ACCESS = {
    "ReadWriteOnce": "SINGLE_NODE_WRITER",
    "ReadWriteOncePod": "SINGLE_NODE_WRITER",
    "ReadOnlyMany": "MULTI_NODE_READER_ONLY",
    "ReadWriteMany": "MULTI_NODE_MULTI_WRITER",
}
_ACCESS_SNMW = dict(_ACCESS, ReadWriteOnce="SINGLE_NODE_MULTI_WRITER", ReadWriteOncePod="SINGLE_NODE_SINGLE_WRITER")
_TEMPLATE = re.compile(r"\$\{([^}]*)\}")


def volume_name(claim: m.PersistentVolumeClaim) -> str:
    """The name of the volume (and PV) provisioned for ``claim``: the sidecar's default."""
    return f"{VOLUME_NAME_PREFIX}-{claim.uid}"


@dataclass(frozen=True)
class ProvisionRequest:
    """What CreateVolume gets for one claim, without secret values (those are fetched by
    reference at the moment of the call). ``capabilities``: (block, CSI access-mode name, fs_type,
    mount flags) per access mode."""

    name: str
    driver: str
    required_bytes: int
    capabilities: tuple[tuple[bool, str, str, tuple[str, ...]], ...]
    parameters: dict[str, str] = field(default_factory=dict)
    secret_ref: SecretRef | None = None
    fs_type: str = ""


def _resolve_template(value: str, claim: m.PersistentVolumeClaim, pv_name: str, where: str,
                      allow_claim_name: bool) -> str:
    tokens = {"pv.name": pv_name, "pvc.namespace": claim.namespace}
    if allow_claim_name:
        tokens["pvc.name"] = claim.name

    def sub(match: re.Match[str]) -> str:
        token = match.group(1)
        if token not in tokens:
            raise FinalError(f"StorageClass parameter {where}: unknown template ${{{token}}}",
                             code="INVALID_PARAMETER")
        return tokens[token]

    return _TEMPLATE.sub(sub, value)


def provisioner_secret(sc: m.StorageClass, claim: m.PersistentVolumeClaim, pv_name: str) -> SecretRef | None:
    """The provisioner secret reference of a StorageClass (``getSecretReference``)."""
    params = sc.parameters
    for op_name, op_ns in ((PREFIX + "provisioner-secret-name", PREFIX + "provisioner-secret-namespace"),
                           (PREFIX + "secret-name", PREFIX + "secret-namespace")):
        if op_name in params or op_ns in params:
            if op_name not in params or op_ns not in params:
                raise FinalError(f"StorageClass {sc.name}: {op_name} and {op_ns} must be given together",
                                 code="INVALID_PARAMETER")
            name = _resolve_template(params[op_name], claim, pv_name, op_name, True)
            ns = _resolve_template(params[op_ns], claim, pv_name, op_ns, False)
            return SecretRef(ns, name)
    return None


def build_request(
    claim: m.PersistentVolumeClaim, sc: m.StorageClass, single_node_multi_writer: bool = False
) -> ProvisionRequest:
    """The CreateVolume request for ``claim`` of class ``sc``; ``FinalError`` for what the sidecar
    refuses (it is shown in ``explain`` and retried with backoff, in case the class is fixed)."""
    name = volume_name(claim)
    params: dict[str, str] = {}
    fs_type = ""
    for key, value in sc.parameters.items():
        low = key.lower()
        if low == FSTYPE_KEY or low == "fstype":
            if fs_type:
                raise FinalError(f"StorageClass {sc.name}: fstype given twice ({FSTYPE_KEY} and fstype)",
                                 code="INVALID_PARAMETER")
            fs_type = value
        elif key in STRIPPED_KEYS:
            continue
        elif key.startswith(PREFIX):
            raise FinalError(f"StorageClass {sc.name}: found unknown parameter key {key!r} with reserved "
                             f"namespace {PREFIX}", code="INVALID_PARAMETER")
        else:
            params[key] = value
    block = (claim.volume_mode or m.FILESYSTEM) == m.BLOCK
    table = _ACCESS_SNMW if single_node_multi_writer else _ACCESS
    modes = claim.access_modes or ("ReadWriteOnce",)
    if "ReadWriteOncePod" in modes and len(modes) > 1:
        raise FinalError(f"claim {claim.key}: ReadWriteOncePod may not be combined with other access modes",
                         code="INVALID_ACCESS_MODE")
    caps = []
    for mode in modes:
        if mode not in table:
            raise FinalError(f"claim {claim.key}: unknown access mode {mode!r}", code="INVALID_ACCESS_MODE")
        caps.append((block, table[mode], "" if block else fs_type, () if block else tuple(sc.mount_options)))
    return ProvisionRequest(
        name=name,
        driver=sc.provisioner,
        required_bytes=int(claim.request_bytes or 0),
        capabilities=tuple(caps),
        parameters=params,
        secret_ref=provisioner_secret(sc, claim, name),
        fs_type="" if block else fs_type,
    )


def claim_consumers(snap: m.Snapshot) -> frozenset[tuple[str, str]]:
    """(namespace, claim name) of every claim a pod in ``snap`` uses: WaitForFirstConsumer
    provisions only these."""
    out: set[tuple[str, str]] = set()
    for pod in snap.pods.values():
        for vol in pod.volumes:
            if isinstance(vol.source, m.PVCSource):
                out.add((pod.namespace, vol.source.claim_name))
    return frozenset(out)


def storage_class_of(claim: m.PersistentVolumeClaim, snap: m.Snapshot) -> m.StorageClass | None:
    """The claim's StorageClass; ``None`` also for a claim with no class name (we know no
    default class: that needs the ``storageclass.kubernetes.io/is-default-class`` annotation,
    which the manifest model does not carry)."""
    if not claim.storage_class_name:
        return None
    return snap.storage_class(claim.storage_class_name)
