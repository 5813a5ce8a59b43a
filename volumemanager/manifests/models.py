"""Typed, frozen models for the subset of the Kubernetes v1 API that manifests use.

These are the *validated* shapes: every object here has passed the loader's checks (names are
safe path components, paths are absolute and normalised, quantities are bytes), so code that
consumes them never re-validates. They are frozen so a snapshot can be handed to other threads
without copying; the ``dict`` fields are plain dicts that by convention nobody mutates.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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
KINDS = (KIND_POD, KIND_PV, KIND_PVC, KIND_SECRET)


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

    @property
    def inline(self) -> bool:
        return self.volume_handle is None


PodVolumeSource = Union[EmptyDirSource, HostPathSource, NFSSource, PVCSource, CSISource]
PVSource = Union[LocalSource, HostPathSource, NFSSource, CSISource]


# --- top-level objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class PodVolume:
    name: str
    source: PodVolumeSource


def derived_pod_uid(namespace: str, name: str) -> str:
    """The UID of a pod whose manifest gives none: stable across restarts and re-reads, so the
    pod's directory (``pods/<uid>``) stays the same."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"volumemanager:{namespace}/{name}"))


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    volumes: tuple[PodVolume, ...]
    origin: Origin

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

    kind = KIND_PVC

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, repr=False)
class Secret:
    """A Secret. ``data`` holds the decoded values; repr/str show only the keys, so a Secret
    that ends up in a log line or a traceback never shows its values."""

    namespace: str
    name: str
    data: dict[str, bytes]
    origin: Origin

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


ManifestObject = Union[Pod, PersistentVolume, PersistentVolumeClaim, Secret]


def object_identity(obj: Any) -> tuple[str, str, str]:
    """(kind, namespace, name): what makes two objects "the same" across files and re-reads.
    PersistentVolumes are cluster-scoped: their namespace is ""."""
    if isinstance(obj, PersistentVolume):
        return (KIND_PV, "", obj.name)
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
