"""Typed, frozen models for the subset of the Kubernetes v1 API that manifests use.

These are the *validated* shapes: every object here has passed the loader's checks (names are
safe path components, paths are absolute and normalised, quantities are bytes), so code that
consumes them never re-validates. They are frozen so a snapshot can be handed to other threads
without copying; the ``dict`` fields are plain dicts that by convention nobody mutates.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Union

from operation_executor.types import SecretRef

DEFAULT_NAMESPACE = "default"
FILESYSTEM = "Filesystem"
BLOCK = "Block"
VOLUME_MODES = (FILESYSTEM, BLOCK)
EMPTY_DIR_MEDIA = ("", "Memory")
HOST_PATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")

KIND_POD = "Pod"
KIND_PV = "PersistentVolume"
KIND_PVC = "PersistentVolumeClaim"
KIND_SECRET = "Secret"
KIND_CONFIGMAP = "ConfigMap"
KIND_STORAGECLASS = "StorageClass"
KIND_CSIDRIVER = "CSIDriver"
KIND_VOLUMESNAPSHOTCLASS = "VolumeSnapshotClass"
KIND_VOLUMESNAPSHOT = "VolumeSnapshot"
KINDS = (
    KIND_POD, KIND_PV, KIND_PVC, KIND_SECRET, KIND_CONFIGMAP, KIND_STORAGECLASS, KIND_CSIDRIVER,
    KIND_VOLUMESNAPSHOTCLASS, KIND_VOLUMESNAPSHOT,
)
# The apiVersion each kind is written with, as in Kubernetes; a document may also leave it out.
KIND_API_VERSIONS = {
    KIND_POD: "v1",
    KIND_PV: "v1",
    KIND_PVC: "v1",
    KIND_SECRET: "v1",
    KIND_CONFIGMAP: "v1",
    KIND_STORAGECLASS: "storage.k8s.io/v1",
    KIND_CSIDRIVER: "storage.k8s.io/v1",
    KIND_VOLUMESNAPSHOTCLASS: "snapshot.storage.k8s.io/v1",
    KIND_VOLUMESNAPSHOT: "snapshot.storage.k8s.io/v1",
}
# Kinds without a namespace: their identity's namespace is "".
CLUSTER_SCOPED_KINDS = frozenset(
    {KIND_PV, KIND_STORAGECLASS, KIND_CSIDRIVER, KIND_VOLUMESNAPSHOTCLASS}
)
DEFAULT_MODE = 0o644  # Kubernetes' default file mode for configMap/secret/downwardAPI/projected
SNAPSHOT_API_GROUP = "snapshot.storage.k8s.io"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object was read from: the file (relative to the manifest dir) and document (1-based)."""

    file: str
    document: int

    def __str__(self) -> str:
        return f"{self.file}: document {self.document}"


# --- volume sources -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmptyDirSource:
    medium: str  # "" (the node's disk, under the root dir) or "Memory" (tmpfs)
    size_limit_bytes: int | None


@dataclass(frozen=True, slots=True)
class HostPathSource:
    path: str  # absolute, normalised, no ".." and no control characters
    type: str  # one of HOST_PATH_TYPES


@dataclass(frozen=True, slots=True)
class NFSSource:
    server: str
    path: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class PVCSource:
    claim_name: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class LocalSource:
    """A PersistentVolume's ``spec.local``: a block device or a directory on this node."""

    path: str
    fs_type: str | None


@dataclass(frozen=True)
class CSISource:
    """A CSI volume: a PV's ``spec.csi`` (``volume_handle`` set) or a pod's inline ephemeral volume
    (``volume_handle`` None). Secret refs always carry a namespace: an inline volume's ref gets
    the pod's namespace."""

    driver: str
    volume_handle: str | None
    fs_type: str | None
    volume_attributes: dict[str, str]
    read_only: bool
    node_stage_secret_ref: SecretRef | None = None
    node_publish_secret_ref: SecretRef | None = None
    node_expand_secret_ref: SecretRef | None = None
    controller_publish_secret_ref: SecretRef | None = None  # ControllerPublish/Unpublish (attach)

    @property
    def inline(self) -> bool:
        return self.volume_handle is None


@dataclass(frozen=True, slots=True)
class KeyToPath:
    """One ``items[]`` entry of a configMap/secret volume: which key goes to which file.
    ``path`` is relative, has no '..' component and no leading '/'."""

    key: str
    path: str
    mode: int | None  # 0..0o777; None = the volume's defaultMode


@dataclass(frozen=True, slots=True)
class ConfigMapVolumeSource:
    name: str
    items: tuple[KeyToPath, ...]  # empty = every key, as a file named after the key
    default_mode: int
    optional: bool


@dataclass(frozen=True, slots=True)
class SecretVolumeSource:
    secret_name: str
    items: tuple[KeyToPath, ...]
    default_mode: int
    optional: bool


@dataclass(frozen=True, slots=True)
class ObjectFieldSelector:
    """``fieldRef``: one of metadata.name/namespace/uid/labels/annotations, or
    ``metadata.labels['k']`` / ``metadata.annotations['k']``."""

    field_path: str
    api_version: str = "v1"


@dataclass(frozen=True, slots=True)
class ResourceFieldSelector:
    """``resourceFieldRef``: a container's limits/requests of cpu, memory or ephemeral-storage,
    divided by ``divisor`` (exact: "1m" of cpu is Fraction(1, 1000))."""

    container_name: str
    resource: str
    divisor: Fraction


@dataclass(frozen=True, slots=True)
class DownwardAPIVolumeFile:
    path: str
    field_ref: ObjectFieldSelector | None  # exactly one of field_ref/resource_field_ref is set
    resource_field_ref: ResourceFieldSelector | None
    mode: int | None


@dataclass(frozen=True, slots=True)
class DownwardAPISource:
    items: tuple[DownwardAPIVolumeFile, ...]
    default_mode: int


@dataclass(frozen=True, slots=True)
class ConfigMapProjection:
    name: str
    items: tuple[KeyToPath, ...]
    optional: bool


@dataclass(frozen=True, slots=True)
class SecretProjection:
    name: str
    items: tuple[KeyToPath, ...]
    optional: bool


@dataclass(frozen=True, slots=True)
class DownwardAPIProjection:
    items: tuple[DownwardAPIVolumeFile, ...]


@dataclass(frozen=True, slots=True)
class ServiceAccountTokenProjection:
    path: str
    audience: str  # "" = the API server's audience
    expiration_seconds: int  # >= 600; default 3600


VolumeProjection = Union[
    ConfigMapProjection, SecretProjection, DownwardAPIProjection, ServiceAccountTokenProjection
]


@dataclass(frozen=True, slots=True)
class ProjectedSource:
    sources: tuple[VolumeProjection, ...]
    default_mode: int


@dataclass(frozen=True, repr=False)
class FlexVolumeSource:
    """A pod's ``flexVolume`` or a PV's ``spec.flexVolume``. ``driver`` is "vendor/driver" (or
    one name); a pod's secret ref gets the pod's namespace. repr shows only the option keys:
    drivers are often handed credentials in options."""

    driver: str
    fs_type: str | None
    secret_ref: SecretRef | None
    read_only: bool
    options: dict[str, str]

    def __repr__(self) -> str:
        return (
            f"FlexVolumeSource(driver={self.driver!r}, fs_type={self.fs_type!r}, "
            f"secret_ref={self.secret_ref!r}, read_only={self.read_only!r}, "
            f"option_keys={sorted(self.options)!r})"
        )

    __str__ = __repr__


PodVolumeSource = Union[
    EmptyDirSource, HostPathSource, NFSSource, PVCSource, CSISource, ConfigMapVolumeSource,
    SecretVolumeSource, DownwardAPISource, ProjectedSource, FlexVolumeSource,
]
PVSource = Union[LocalSource, HostPathSource, NFSSource, CSISource, FlexVolumeSource]


# --- top-level objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class PodVolume:
    name: str
    source: PodVolumeSource


def derived_pod_uid(namespace: str, name: str) -> str:
    """The UID of a pod whose manifest gives none: stable across restarts and re-reads, so the
    pod's directory (``pods/<uid>``) stays the same."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"volumemanager:{namespace}/{name}"))


def derived_uid(kind: str, namespace: str, name: str) -> str:
    """The UID of a namespaced object other than a pod whose manifest gives none: stable across
    restarts, and never equal to a pod's derived UID (the kind is part of it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"volumemanager:{kind}:{namespace}/{name}"))


@dataclass(frozen=True, slots=True)
class Container:
    """What the downward API reads of a container: its name and resources. Quantities are
    exact (cpu "500m" is Fraction(1, 2)); only cpu, memory and ephemeral-storage are kept."""

    name: str
    requests: dict[str, Fraction] = field(default_factory=dict)
    limits: dict[str, Fraction] = field(default_factory=dict)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    volumes: tuple[PodVolume, ...]
    origin: Origin
    # The fields below hold dicts, so they are left out of the hash (a pod stays as hashable
    # as it was before they existed); equality still compares them.
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    containers: tuple[Container, ...] = field(default=(), hash=False)
    init_containers: tuple[Container, ...] = field(default=(), hash=False)
    fs_group: int | None = None  # spec.securityContext.fsGroup
    fs_group_change_policy: str | None = None  # Always | OnRootMismatch; None = not given (Always)
    service_account_name: str = "default"

    kind = KIND_POD

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def volume(self, name: str) -> PodVolume | None:
        for vol in self.volumes:
            if vol.name == name:
                return vol
        return None


@dataclass(frozen=True)
class PersistentVolume:
    """A PV. Cluster-scoped: it has no namespace."""

    name: str
    source: PVSource
    volume_mode: str
    mount_options: tuple[str, ...]
    access_modes: tuple[str, ...]
    capacity_bytes: int | None
    claim_ref: tuple[str, str] | None  # (namespace, name) of the claim it is reserved for
    origin: Origin
    reclaim_policy: str = "Retain"  # Retain | Delete (Recycle is refused)
    storage_class_name: str = ""  # "" = no class
    annotations: dict[str, str] = field(default_factory=dict, hash=False)

    kind = KIND_PV

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class PersistentVolumeClaim:
    namespace: str
    name: str
    volume_name: str | None  # the PV it is bound to; None = not bound
    volume_mode: str | None  # None = not given (Filesystem)
    access_modes: tuple[str, ...]
    origin: Origin
    # metadata.creationTimestamp (seconds since the epoch), if given: when two claims name
    # the same PV, the older one gets it.
    created: float | None = None
    uid: str = ""  # metadata.uid, or derived_uid(KIND_PVC, namespace, name) when absent
    storage_class_name: str | None = None  # None = not given (the default class); "" = no class
    request_bytes: int | None = None  # spec.resources.requests.storage
    data_source: TypedObjectReference | None = None
    data_source_ref: TypedObjectReference | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False)

    kind = KIND_PVC

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class TypedObjectReference:
    """A PVC's dataSource/dataSourceRef: a VolumeSnapshot (api_group snapshot.storage.k8s.io)
    or a PersistentVolumeClaim (api_group "", the core group), in the claim's namespace."""

    api_group: str
    kind: str
    name: str


@dataclass(frozen=True, repr=False)
class Secret:
    """A Secret. ``data`` holds the decoded values; repr/str show only the keys, so a Secret
    that ends up in a log line or a traceback never shows its values."""

    namespace: str
    name: str
    data: dict[str, bytes]
    origin: Origin
    type: str = "Opaque"
    immutable: bool = False

    kind = KIND_SECRET

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __repr__(self) -> str:
        return (
            f"Secret(namespace={self.namespace!r}, name={self.name!r}, "
            f"keys={sorted(self.data)!r}, origin={self.origin!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class ConfigMap:
    """A ConfigMap. Like Secret, repr/str show only the keys: config often holds things that
    should not end up in logs."""

    namespace: str
    name: str
    data: dict[str, str]
    binary_data: dict[str, bytes]
    immutable: bool
    origin: Origin

    kind = KIND_CONFIGMAP

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __repr__(self) -> str:
        return (
            f"ConfigMap(namespace={self.namespace!r}, name={self.name!r}, "
            f"keys={sorted(self.data)!r}, binary_keys={sorted(self.binary_data)!r}, "
            f"origin={self.origin!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class TopologySelectorTerm:
    """One ``allowedTopologies[]`` term: (key, values) pairs that must all match."""

    match_label_expressions: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class StorageClass:
    """A StorageClass (storage.k8s.io/v1). Cluster-scoped."""

    name: str
    provisioner: str
    parameters: dict[str, str]
    reclaim_policy: str  # Delete (default) | Retain
    volume_binding_mode: str  # Immediate (default) | WaitForFirstConsumer
    allow_volume_expansion: bool
    mount_options: tuple[str, ...]
    allowed_topologies: tuple[TopologySelectorTerm, ...]
    origin: Origin

    kind = KIND_STORAGECLASS

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class TokenRequest:
    audience: str
    expiration_seconds: int | None


@dataclass(frozen=True)
class CSIDriver:
    """A CSIDriver object (storage.k8s.io/v1): how the kubelet is to treat a driver. The name
    is the driver's name. Cluster-scoped."""

    name: str
    attach_required: bool  # default True
    pod_info_on_mount: bool  # default False
    fs_group_policy: str  # None | File | ReadWriteOnceWithFSType (default)
    volume_lifecycle_modes: tuple[str, ...]  # Persistent | Ephemeral; default (Persistent,)
    requires_republish: bool
    token_requests: tuple[TokenRequest, ...]
    origin: Origin

    kind = KIND_CSIDRIVER

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class VolumeSnapshotClass:
    """A VolumeSnapshotClass (snapshot.storage.k8s.io/v1). Cluster-scoped."""

    name: str
    driver: str
    deletion_policy: str  # Delete | Retain
    parameters: dict[str, str]
    origin: Origin

    kind = KIND_VOLUMESNAPSHOTCLASS

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class VolumeSnapshot:
    """A VolumeSnapshot (snapshot.storage.k8s.io/v1) of a claim in its own namespace."""

    namespace: str
    name: str
    uid: str  # metadata.uid, or derived_uid(KIND_VOLUMESNAPSHOT, namespace, name)
    volume_snapshot_class_name: str | None  # None = the default class
    source_pvc_name: str
    origin: Origin

    kind = KIND_VOLUMESNAPSHOT

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


ManifestObject = Union[
    Pod, PersistentVolume, PersistentVolumeClaim, Secret, ConfigMap, StorageClass, CSIDriver,
    VolumeSnapshotClass, VolumeSnapshot,
]


def object_identity(obj: Any) -> tuple[str, str, str]:
    """(kind, namespace, name): what makes two objects "the same" across files and re-reads.
    Cluster-scoped objects (PersistentVolume, StorageClass, ...) have namespace ""."""
    if obj.kind in CLUSTER_SCOPED_KINDS:
        return (obj.kind, "", obj.name)
    return (obj.kind, obj.namespace, obj.name)


# --- errors and snapshots -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestError:
    """A problem with a manifest file, one document of it, or one field of that document.

    Messages never contain Secret values or mount options: they are shown by ``status`` and
    logged as they are.
    """

    file: str
    document: int | None
    field: str | None
    message: str
    kind: str | None = None
    name: str | None = None  # "namespace/name" (or the PV name) when it could be read

    def __str__(self) -> str:
        parts = [self.file]
        if self.document is not None:
            parts.append(f"document {self.document}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "document": self.document,
            "field": self.field,
            "message": self.message,
            "kind": self.kind,
            "name": self.name,
            "text": str(self),
        }


@dataclass(frozen=True)
class Snapshot:
    """The desired state at one moment: every valid object, and every error found.

    ``generation`` increases whenever anything in it changes, so a consumer can tell cheaply
    whether it has already seen this snapshot.
    """

    pods: dict[str, Pod]  # keyed by uid
    pvs: dict[str, PersistentVolume]  # keyed by name
    pvcs: dict[tuple[str, str], PersistentVolumeClaim]  # keyed by (namespace, name)
    secrets: dict[tuple[str, str], Secret]  # keyed by (namespace, name)
    errors: tuple[ManifestError, ...]
    generation: int
    configmaps: dict[tuple[str, str], ConfigMap] = field(default_factory=dict)
    storageclasses: dict[str, StorageClass] = field(default_factory=dict)
    csidrivers: dict[str, CSIDriver] = field(default_factory=dict)
    volumesnapshotclasses: dict[str, VolumeSnapshotClass] = field(default_factory=dict)
    volumesnapshots: dict[tuple[str, str], VolumeSnapshot] = field(default_factory=dict)
    # (generation G, uids): compared with the snapshot of generation G from the same source,
    # only these pods were added, removed or replaced; None when the source cannot say. Lets a
    # consumer look at what changed instead of at every pod (issue 16).
    pods_changed: tuple[int, frozenset[str]] | None = field(default=None, compare=False)

    @classmethod
    def empty(cls, generation: int = 0, errors: tuple[ManifestError, ...] = ()) -> Snapshot:
        return cls({}, {}, {}, {}, errors, generation)

    def pod_by_key(self, key: str) -> Pod | None:
        """The pod called "namespace/name", if any."""
        for pod in self.pods.values():
            if pod.key == key:
                return pod
        return None

    def secret(self, ref: SecretRef) -> Secret | None:
        return self.secrets.get((ref.namespace, ref.name))

    def configmap(self, namespace: str, name: str) -> ConfigMap | None:
        return self.configmaps.get((namespace, name))

    def storage_class(self, name: str) -> StorageClass | None:
        return self.storageclasses.get(name)

    def csi_driver(self, name: str) -> CSIDriver | None:
        return self.csidrivers.get(name)

    def volume_snapshot_class(self, name: str) -> VolumeSnapshotClass | None:
        return self.volumesnapshotclasses.get(name)

    def volume_snapshot(self, namespace: str, name: str) -> VolumeSnapshot | None:
        return self.volumesnapshots.get((namespace, name))
