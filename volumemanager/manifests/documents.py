"""One parsed document (plain dicts/lists from YAML or JSON) -> one validated model object.

Validation is total: a document is either turned into an object or rejected with errors that
each name the field (``spec.volumes[0].emptyDir.sizeLimit``), never half-accepted. Input is
untrusted: any value may have any type, so every access goes through a checker that records
"must be a string, not list" instead of raising. Error messages never repeat Secret values or
mount options, because they are shown by ``status`` and logged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import posixpath
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Protocol, TypeVar

from operation_executor.types import SecretRef
from volumemanager.manifests import names
from volumemanager.manifests.models import (
    ACCESS_MODES,
    CLUSTER_SCOPED_KINDS,
    DEFAULT_MODE,
    DEFAULT_NAMESPACE,
    KIND_API_VERSIONS,
    KIND_CONFIGMAP,
    KIND_CSIDRIVER,
    KIND_STORAGECLASS,
    KIND_VOLUMESNAPSHOT,
    KIND_VOLUMESNAPSHOTCLASS,
    SNAPSHOT_API_GROUP,
    ConfigMap,
    ConfigMapProjection,
    ConfigMapVolumeSource,
    Container,
    CSIDriver,
    DownwardAPIProjection,
    DownwardAPISource,
    DownwardAPIVolumeFile,
    FlexVolumeSource,
    KeyToPath,
    ObjectFieldSelector,
    ProjectedSource,
    ResourceFieldSelector,
    SecretProjection,
    SecretVolumeSource,
    ServiceAccountTokenProjection,
    StorageClass,
    TokenRequest,
    TopologySelectorTerm,
    TypedObjectReference,
    VolumeSnapshot,
    VolumeSnapshotClass,
    derived_uid,
    EMPTY_DIR_MEDIA,
    FILESYSTEM,
    HOST_PATH_TYPES,
    KIND_POD,
    KIND_PV,
    KIND_PVC,
    KIND_SECRET,
    KINDS,
    VOLUME_MODES,
    CSISource,
    EmptyDirSource,
    HostPathSource,
    LocalSource,
    ManifestError,
    NFSSource,
    Origin,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    PodVolume,
    PVCSource,
    Secret,
    derived_pod_uid,
)
from volumemanager.manifests.quantity import parse_quantity, parse_quantity_exact

MAX_ERRORS_PER_DOCUMENT = 20  # enough to fix a document; bounds the output for hostile input
PATH_MAX = 4096  # Linux PATH_MAX
FS_TYPE_MAX = 63
CSI_HANDLE_MAX = 4096  # the handle is hashed into a path, so only a sanity bound is needed
API_VERSION = "v1"

POD_VOLUME_SOURCES = (
    "emptyDir", "hostPath", "nfs", "persistentVolumeClaim", "csi", "configMap", "secret",
    "downwardAPI", "projected", "flexVolume",
)
PV_SOURCES = ("local", "hostPath", "nfs", "csi", "flexVolume")
MAX_DATA_BYTES = 1024 * 1024  # Kubernetes' bound on a ConfigMap's or Secret's data (keys + values)
MODE_MAX = 0o777
TOKEN_EXPIRATION_MIN = 600  # Kubernetes: serviceAccountToken.expirationSeconds >= 10 minutes
TOKEN_EXPIRATION_MAX = 2**32
TOKEN_EXPIRATION_DEFAULT = 3600
# What the kubelet can put into a downwardAPI volume (validVolumeDownwardAPIFieldPathExpressions).
DOWNWARD_FIELD_PATHS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels", "metadata.annotations",
)
_DOWNWARD_SUBSCRIPT_RE = re.compile(r"metadata\.(labels|annotations)\['([^'\]]+)'\]")
DOWNWARD_RESOURCES = (
    "limits.cpu", "limits.memory", "limits.ephemeral-storage",
    "requests.cpu", "requests.memory", "requests.ephemeral-storage",
)
CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
# Kubernetes' validateContainerResourceDivisor: the divisors each resource accepts.
_CPU_DIVISORS = (Fraction(1, 1000), Fraction(1))
_BYTE_DIVISORS = tuple(Fraction(10) ** e for e in (0, 3, 6, 9, 12, 15, 18)) + tuple(
    Fraction(1024) ** e for e in range(1, 7)
)
FS_GROUP_CHANGE_POLICIES = ("Always", "OnRootMismatch")
PV_RECLAIM_POLICIES = ("Retain", "Delete")
SC_RECLAIM_POLICIES = ("Delete", "Retain")
BINDING_MODES = ("Immediate", "WaitForFirstConsumer")
FS_GROUP_POLICIES = ("None", "File", "ReadWriteOnceWithFSType")
LIFECYCLE_MODES = ("Persistent", "Ephemeral")
DELETION_POLICIES = ("Delete", "Retain")
PROJECTION_SOURCES = ("configMap", "secret", "downwardAPI", "serviceAccountToken")
STRING_MAX = 4096  # bound on free-form strings (provisioner, parameter keys, audience)
# Kubernetes PV volume sources this daemon has no plugin for: named in the error so the user
# knows the PV was understood but cannot be served here.
PV_UNSUPPORTED_SOURCES = (
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "fc",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "iscsi",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
)


class _TooManyErrors(Exception):
    """Raised by the checker once a document has MAX_ERRORS_PER_DOCUMENT errors."""


_MISSING: Any = object()


class _Checker:
    """Collects the errors of one document; every helper returns None when the value is bad."""

    def __init__(self, file: str, document: int) -> None:
        self.file = file
        self.document = document
        self.errors: list[ManifestError] = []
        self.kind: str | None = None
        self.name: str | None = None

    def error(self, field: str | None, message: str) -> None:
        if len(self.errors) >= MAX_ERRORS_PER_DOCUMENT:
            raise _TooManyErrors
        self.errors.append(
            ManifestError(self.file, self.document, field or None, message, self.kind, self.name)
        )

    # -- typed accessors ---------------------------------------------------------------------

    def mapping(self, value: Any, field: str, required: bool = False) -> dict[str, Any] | None:
        if value is None or value is _MISSING:
            if required:
                self.error(field, "required")
            return None
        if not isinstance(value, dict):
            self.error(field, f"must be a mapping, not {_type(value)}")
            return None
        return value

    def string(
        self, m: dict[str, Any], key: str, parent: str, required: bool = False
    ) -> str | None:
        value = m.get(key)
        field = _join(parent, key)
        if value is None:
            if required:
                self.error(field, "required")
            return None
        if not isinstance(value, str):
            self.error(field, f"must be a string, not {_type(value)}")
            return None
        if required and value == "":
            self.error(field, "required (must not be empty)")
            return None
        return value

    def boolean(self, m: dict[str, Any], key: str, parent: str) -> bool:
        value = m.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.error(_join(parent, key), f"must be true or false, not {_type(value)}")
            return False
        return value

    def string_list(
        self, m: dict[str, Any], key: str, parent: str, secret: bool = False
    ) -> tuple[str, ...] | None:
        """A list of strings without control characters; ``secret`` keeps values out of errors."""
        value = m.get(key)
        field = _join(parent, key)
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(field, f"must be a list, not {_type(value)}")
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(value):
            item_field = f"{field}[{i}]"
            if not isinstance(item, str):
                self.error(item_field, f"must be a string, not {_type(item)}")
                ok = False
            elif item == "":
                self.error(item_field, "must not be empty")
                ok = False
            elif _control_char(item) is not None:
                where = "" if secret else f" in {names.shown(item)}"
                self.error(item_field, f"must not contain control characters{where}")
                ok = False
            else:
                out.append(item)
        return tuple(out) if ok else None

    def name_field(
        self, m: dict[str, Any], key: str, parent: str, problem: Callable[[object], str | None],
        required: bool = True,
    ) -> str | None:
        value = m.get(key)
        field = _join(parent, key)
        if value is None:
            if required:
                self.error(field, "required")
            return None
        why = problem(value)
        if why:
            self.error(field, why)
            return None
        return value

    def quantity(self, m: dict[str, Any], key: str, parent: str) -> int | None:
        value = m.get(key)
        if value is None:
            return None
        try:
            return parse_quantity(value)
        except ValueError as exc:
            self.error(_join(parent, key), str(exc))
            return None

    def one_of(
        self, m: dict[str, Any], key: str, parent: str, allowed: tuple[str, ...], default: str | None
    ) -> str | None:
        value = self.string(m, key, parent)
        if value is None:
            return default
        if value not in allowed:
            shown_allowed = ", ".join(repr(a) for a in allowed)
            self.error(_join(parent, key), f"{names.shown(value)} is not one of {shown_allowed}")
            return None
        return value

    def absolute_path(
        self, m: dict[str, Any], key: str, parent: str, normalised: bool = True
    ) -> str | None:
        """A host path: absolute, no control characters, no '..'; normalised unless told not."""
        value = self.string(m, key, parent, required=True)
        if value is None:
            return None
        problem = path_problem(value, normalised)
        if problem:
            self.error(_join(parent, key), problem)
            return None
        return value

    def fs_type(self, m: dict[str, Any], key: str, parent: str) -> str | None:
        value = self.string(m, key, parent)
        if not value:
            return None
        ok = (
            len(value) <= FS_TYPE_MAX
            and value[0].isascii()
            and value[0].isalnum()
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
        )
        if not ok:
            self.error(
                _join(parent, key),
                f"{names.shown(value)} is not a filesystem type (letters, digits, '.', '_', '-')",
            )
            return None
        return value

    def string_map(
        self, m: dict[str, Any], key: str, parent: str, secret: bool = False
    ) -> dict[str, str] | None:
        """A str -> str mapping (labels, parameters, options); ``secret`` keeps values out of
        errors. Keys must be non-empty strings without control characters."""
        field = _join(parent, key)
        mm = self.mapping(m.get(key), field)
        if mm is None:
            return None if m.get(key) is not None else {}
        out: dict[str, str] = {}
        ok = True
        for k, v in mm.items():
            kf = f"{field}[{key_text(k)}]"
            if not isinstance(k, str) or k == "" or _control_char(k) is not None or len(k) > STRING_MAX:
                self.error(kf, "keys must be non-empty strings without control characters")
                ok = False
            elif v is None:
                out[k] = ""
            elif not isinstance(v, str):
                self.error(kf, f"must be a string, not {_type(v)} (quote it)")
                ok = False
            else:
                out[k] = v
        return out if ok else None

    def integer(
        self, m: dict[str, Any], key: str, parent: str, low: int, high: int, shown_octal: bool = False
    ) -> tuple[bool, int | None]:
        """(ok, value) of an optional integer in [low, high]; booleans are not integers."""
        value = m.get(key)
        if value is None:
            return True, None
        field = _join(parent, key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(field, f"must be an integer, not {_type(value)}")
            return False, None
        if not low <= value <= high:
            rng = f"{low:#o}..{high:#o}" if shown_octal else f"{low}..{high}"
            self.error(field, f"{value} is out of range ({rng})")
            return False, None
        return True, value

    def mode(self, m: dict[str, Any], key: str, parent: str) -> tuple[bool, int | None]:
        """A file mode 0..0777 (YAML 0644 is octal; JSON has decimal 420)."""
        return self.integer(m, key, parent, 0, MODE_MAX, shown_octal=True)

    def optional_bool(self, m: dict[str, Any], key: str, parent: str, default: bool) -> bool:
        if m.get(key) is None:
            return default
        return self.boolean(m, key, parent)

    def access_modes(self, m: dict[str, Any], parent: str) -> tuple[str, ...] | None:
        modes = self.string_list(m, "accessModes", parent)
        if modes is None:
            return None
        for i, mode in enumerate(modes):
            if mode not in ACCESS_MODES:
                self.error(
                    f"{_join(parent, 'accessModes')}[{i}]",
                    f"{names.shown(mode)} is not one of {', '.join(ACCESS_MODES)}",
                )
                return None
        return modes


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def key_text(key: Any) -> str:
    """A mapping key as it appears in a field path: as is when it is plain, escaped otherwise."""
    if isinstance(key, str) and 0 < len(key) <= names.SHOWN_MAX and key.isprintable() and key.isascii():
        return key
    return names.shown(key)


def _control_char(value: str) -> int | None:
    for i, ch in enumerate(value):
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            return i
    return None


def path_problem(value: str, normalised: bool = True) -> str | None:
    """Why ``value`` cannot be a host path, or None."""
    at = _control_char(value)
    if at is not None:
        return f"must not contain control or NUL characters (at offset {at})"
    if not value.startswith("/"):
        return f"{names.shown(value)} must be an absolute path"
    if len(value.encode("utf-8", "surrogatepass")) > PATH_MAX:
        return f"must be no more than {PATH_MAX} bytes"
    if ".." in value.split("/"):
        return f"{names.shown(value)} must not contain a '..' component"
    if normalised:
        norm = posixpath.normpath(value)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        if norm != value:
            return f"{names.shown(value)} must be a normalised path (did you mean {norm!r}?)"
    return None


# --- per-kind parsers -----------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentResult:
    """The outcome for one document: an object, or errors (never both).

    ``identity`` is (kind, namespace, name) whenever those could be read, even if the document
    was rejected: the store uses it to keep the last good version of a rejected object.
    """

    obj: Any | None
    errors: tuple[ManifestError, ...]
    identity: tuple[str, str, str] | None


def parse_document(doc: Any, file: str, document: int) -> DocumentResult:
    """Validate one document; ``None`` (an empty document) yields neither object nor errors."""
    c = _Checker(file, document)
    identity: tuple[str, str, str] | None = None
    if doc is None:
        return DocumentResult(None, (), None)
    obj: Any = None
    try:
        if not isinstance(doc, dict):
            c.error(None, f"a document must be a mapping with 'kind', not {_type(doc)}")
        else:
            identity = _identity(c, doc)
            parser = _PARSERS.get(c.kind or "")
            if parser is not None:
                obj = parser(c, doc, Origin(file, document))
    except _TooManyErrors:
        c.errors.append(
            ManifestError(
                file, document, None, f"more than {MAX_ERRORS_PER_DOCUMENT} errors; stopped",
                c.kind, c.name,
            )
        )
    if c.errors:
        return DocumentResult(None, tuple(c.errors), identity)
    return DocumentResult(obj, (), identity)


def _identity(c: _Checker, doc: dict[str, Any]) -> tuple[str, str, str] | None:
    """Check apiVersion/kind and read (kind, namespace, name); None if unreadable."""
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if kind is None:
        c.error("kind", f"required (one of {', '.join(KINDS)})")
        return None
    if not isinstance(kind, str):
        c.error("kind", f"must be a string, not {_type(kind)}")
        return None
    c.kind = key_text(kind)
    if kind not in KINDS:
        c.error("kind", f"unsupported kind {names.shown(kind)} (supported: {', '.join(KINDS)})")
        return None
    want = KIND_API_VERSIONS.get(kind, API_VERSION)
    if api_version is not None and api_version != want:
        c.error("apiVersion", f"{names.shown(api_version)} is not supported for {kind} (use {want})")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name")
    if names.subdomain_problem(name):
        return None
    if kind in CLUSTER_SCOPED_KINDS:
        c.name = name
        return (kind, "", name)
    namespace = meta.get("namespace")
    if namespace is None:
        namespace = DEFAULT_NAMESPACE
    if names.label_problem(namespace):
        return None
    c.name = f"{namespace}/{name}"
    return (kind, namespace, name)


def _metadata(c: _Checker, doc: dict[str, Any], namespaced: bool) -> tuple[str | None, str | None, dict[str, Any]]:
    meta = c.mapping(doc.get("metadata", _MISSING), "metadata", required=True)
    if meta is None:
        return None, None, {}
    name = c.name_field(meta, "name", "metadata", names.subdomain_problem)
    namespace: str | None = None
    if namespaced:
        if meta.get("namespace") is None:
            namespace = DEFAULT_NAMESPACE
        else:
            namespace = c.name_field(meta, "namespace", "metadata", names.label_problem)
    return name, namespace, meta


def _parse_pod(c: _Checker, doc: dict[str, Any], origin: Origin) -> Pod | None:
    name, namespace, meta = _metadata(c, doc, namespaced=True)
    uid: str | None = None
    if meta.get("uid") is not None:
        uid = c.name_field(meta, "uid", "metadata", names.uid_problem)
    elif name is not None and namespace is not None:
        uid = derived_pod_uid(namespace, name)
    labels = c.string_map(meta, "labels", "metadata")
    annotations = c.string_map(meta, "annotations", "metadata")
    spec = c.mapping(doc.get("spec"), "spec")
    volumes: list[PodVolume] = []
    containers: tuple[Container, ...] = ()
    init_containers: tuple[Container, ...] = ()
    fs_group: int | None = None
    fs_group_change_policy: str | None = None
    service_account = "default"
    if spec is not None:
        containers = _containers(c, spec, "containers")
        init_containers = _containers(c, spec, "initContainers")
        sc = c.mapping(spec.get("securityContext"), "spec.securityContext")
        if sc is not None:
            _, fs_group = c.integer(sc, "fsGroup", "spec.securityContext", 0, 2**31 - 1)
            fs_group_change_policy = c.one_of(
                sc, "fsGroupChangePolicy", "spec.securityContext", FS_GROUP_CHANGE_POLICIES, None
            )
        if spec.get("serviceAccountName") is not None:
            service_account = c.name_field(
                spec, "serviceAccountName", "spec", names.subdomain_problem
            ) or "default"
        raw = spec.get("volumes")
        if raw is not None and not isinstance(raw, list):
            c.error("spec.volumes", f"must be a list, not {_type(raw)}")
        elif raw:
            seen: dict[str, int] = {}
            for i, item in enumerate(raw):
                vol = _parse_pod_volume(c, item, f"spec.volumes[{i}]", namespace)
                if vol is None:
                    continue
                if vol.name in seen:
                    c.error(
                        f"spec.volumes[{i}].name",
                        f"duplicate volume name {vol.name!r} (also spec.volumes[{seen[vol.name]}])",
                    )
                    continue
                seen[vol.name] = i
                volumes.append(vol)
    if not c.errors:
        _check_container_refs(c, volumes, containers + init_containers)
    if c.errors or name is None or namespace is None or uid is None:
        return None
    return Pod(
        namespace, name, uid, tuple(volumes), origin,
        labels=labels or {},
        annotations=annotations or {},
        containers=containers,
        init_containers=init_containers,
        fs_group=fs_group,
        fs_group_change_policy=fs_group_change_policy,
        service_account_name=service_account,
    )


def _parse_pod_volume(
    c: _Checker, item: Any, field: str, pod_namespace: str | None
) -> PodVolume | None:
    m = c.mapping(item, field, required=True)
    if m is None:
        return None
    vol_name = c.name_field(m, "name", field, names.label_problem)
    keys = [k for k in m if k != "name"]
    supported = [k for k in keys if k in POD_VOLUME_SOURCES]
    unsupported = [k for k in keys if k not in POD_VOLUME_SOURCES]
    if unsupported:
        c.error(
            _join(field, key_text(unsupported[0])),
            f"unsupported volume type (supported: {', '.join(POD_VOLUME_SOURCES)})",
        )
        return None
    if not supported:
        c.error(field, f"must specify a volume type (one of {', '.join(POD_VOLUME_SOURCES)})")
        return None
    if len(supported) > 1:
        c.error(field, f"may specify only one volume type, found {' and '.join(supported)}")
        return None
    key = supported[0]
    sub = _join(field, key)
    value = m.get(key)
    if key in ("emptyDir", "downwardAPI", "projected", "secret", "configMap") and value is None:
        value = {}  # "emptyDir:" with nothing after it means the defaults
    sm = c.mapping(value, sub, required=True)
    if sm is None:
        return None
    source: Any
    if key == "emptyDir":
        source = _empty_dir(c, sm, sub)
    elif key == "hostPath":
        source = _host_path(c, sm, sub)
    elif key == "nfs":
        source = _nfs(c, sm, sub)
    elif key == "persistentVolumeClaim":
        claim = c.name_field(sm, "claimName", sub, names.subdomain_problem)
        read_only = c.boolean(sm, "readOnly", sub)
        source = PVCSource(claim, read_only) if claim is not None else None
    elif key == "configMap":
        source = _keyed_volume(c, sm, sub, "name", ConfigMapVolumeSource)
    elif key == "secret":
        source = _keyed_volume(c, sm, sub, "secretName", SecretVolumeSource)
    elif key == "downwardAPI":
        source = _downward_volume(c, sm, sub)
    elif key == "projected":
        source = _projected(c, sm, sub)
    elif key == "flexVolume":
        source = _flex(c, sm, sub, inline=True, pod_namespace=pod_namespace)
    else:
        source = _csi(c, sm, sub, inline=True, pod_namespace=pod_namespace)
    if source is None or vol_name is None:
        return None
    return PodVolume(vol_name, source)


def _empty_dir(c: _Checker, m: dict[str, Any], field: str) -> EmptyDirSource | None:
    medium = c.one_of(m, "medium", field, EMPTY_DIR_MEDIA, "")
    errors_before = len(c.errors)
    size = c.quantity(m, "sizeLimit", field)
    if medium is None or len(c.errors) > errors_before:
        return None
    return EmptyDirSource(medium, size)


def _host_path(c: _Checker, m: dict[str, Any], field: str) -> HostPathSource | None:
    path = c.absolute_path(m, "path", field)
    type_ = c.one_of(m, "type", field, HOST_PATH_TYPES, "")
    if path is None or type_ is None:
        return None
    return HostPathSource(path, type_)


def _nfs(c: _Checker, m: dict[str, Any], field: str) -> NFSSource | None:
    server = c.string(m, "server", field, required=True)
    if server is not None:
        bad = next((ch for ch in server if ch.isspace() or ch in ",/" or not ch.isprintable()), None)
        if bad is not None:
            c.error(_join(field, "server"), f"must be a host name or address, found {bad!r}")
            server = None
    path = c.absolute_path(m, "path", field, normalised=False)
    read_only = c.boolean(m, "readOnly", field)
    if server is None or path is None:
        return None
    return NFSSource(server, path, read_only)


def _secret_ref(
    c: _Checker, m: dict[str, Any], key: str, parent: str, inline: bool, pod_namespace: str | None
) -> tuple[bool, SecretRef | None]:
    """(ok, ref): a PV's SecretReference (name + namespace) or a pod's LocalObjectReference
    (name only; the pod's namespace is implied)."""
    field = _join(parent, key)
    rm = c.mapping(m.get(key), field)
    if rm is None:
        return (m.get(key) is None), None
    name = c.name_field(rm, "name", field, names.subdomain_problem)
    if inline:
        namespace: str | None = pod_namespace
    else:
        namespace = c.name_field(rm, "namespace", field, names.label_problem)
    if name is None or namespace is None:
        return False, None
    return True, SecretRef(namespace, name)


def _csi(
    c: _Checker, m: dict[str, Any], field: str, inline: bool, pod_namespace: str | None = None
) -> CSISource | None:
    """A PV's ``spec.csi`` or (``inline``) a pod's inline ephemeral ``csi`` volume, whose secret
    ref lives in ``pod_namespace``."""
    before = len(c.errors)
    driver = c.name_field(m, "driver", field, names.csi_driver_problem)
    handle: str | None = None
    if not inline:
        handle = c.string(m, "volumeHandle", field, required=True)
        if handle is not None:
            if _control_char(handle) is not None:
                c.error(_join(field, "volumeHandle"), "must not contain control or NUL characters")
            elif len(handle) > CSI_HANDLE_MAX:
                c.error(_join(field, "volumeHandle"), f"must be no more than {CSI_HANDLE_MAX} characters")
    fs_type = c.fs_type(m, "fsType", field)
    attributes: dict[str, str] = {}
    am = c.mapping(m.get("volumeAttributes"), _join(field, "volumeAttributes"))
    if am is not None:
        for k, v in am.items():
            kf = f"{_join(field, 'volumeAttributes')}[{key_text(k)}]"
            if not isinstance(k, str) or k == "":
                c.error(kf, "keys must be non-empty strings")
            elif not isinstance(v, str):
                c.error(kf, f"must be a string, not {_type(v)} (quote it)")
            else:
                attributes[k] = v
    read_only = c.boolean(m, "readOnly", field)
    refs: dict[str, SecretRef | None] = {}
    ref_keys = ("nodePublishSecretRef",) if inline else (
        "nodeStageSecretRef", "nodePublishSecretRef", "nodeExpandSecretRef", "controllerPublishSecretRef"
    )
    for key in ref_keys:
        _, refs[key] = _secret_ref(c, m, key, field, inline, pod_namespace)
    if len(c.errors) > before or driver is None or (not inline and handle is None):
        return None
    return CSISource(
        driver=driver,
        volume_handle=handle,
        fs_type=fs_type,
        volume_attributes=attributes,
        read_only=read_only,
        node_stage_secret_ref=refs.get("nodeStageSecretRef"),
        node_publish_secret_ref=refs.get("nodePublishSecretRef"),
        node_expand_secret_ref=refs.get("nodeExpandSecretRef"),
        controller_publish_secret_ref=refs.get("controllerPublishSecretRef"),
    )


def _parse_pv(c: _Checker, doc: dict[str, Any], origin: Origin) -> PersistentVolume | None:
    name, _, meta = _metadata(c, doc, namespaced=False)
    spec = c.mapping(doc.get("spec", _MISSING), "spec", required=True)
    if spec is None:
        return None
    present = [k for k in PV_SOURCES if spec.get(k) is not None]
    unsupported = [k for k in PV_UNSUPPORTED_SOURCES if k in spec]
    source: Any = None
    if unsupported:
        c.error(f"spec.{unsupported[0]}", f"unsupported volume type (supported: {', '.join(PV_SOURCES)})")
    elif not present:
        c.error("spec", f"must specify a volume type (one of {', '.join(PV_SOURCES)})")
    elif len(present) > 1:
        c.error("spec", f"may specify only one volume type, found {' and '.join(present)}")
    else:
        key = present[0]
        field = f"spec.{key}"
        sm = c.mapping(spec.get(key), field, required=True)
        if sm is not None:
            if key == "local":
                path = c.absolute_path(sm, "path", field)
                fs_type = c.fs_type(sm, "fsType", field)
                source = LocalSource(path, fs_type) if path is not None else None
            elif key == "hostPath":
                source = _host_path(c, sm, field)
            elif key == "nfs":
                source = _nfs(c, sm, field)
            elif key == "flexVolume":
                source = _flex(c, sm, field, inline=False)
            else:
                source = _csi(c, sm, field, inline=False)
    volume_mode = c.one_of(spec, "volumeMode", "spec", VOLUME_MODES, FILESYSTEM)
    mount_options = c.string_list(spec, "mountOptions", "spec", secret=True)
    access_modes = c.access_modes(spec, "spec")
    capacity_bytes: int | None = None
    cap = c.mapping(spec.get("capacity"), "spec.capacity")
    if cap is not None:
        capacity_bytes = c.quantity(cap, "storage", "spec.capacity")
    claim_ref: tuple[str, str] | None = None
    cr = c.mapping(spec.get("claimRef"), "spec.claimRef")
    if cr is not None:
        claim_name = c.name_field(cr, "name", "spec.claimRef", names.subdomain_problem)
        claim_ns = (
            DEFAULT_NAMESPACE
            if cr.get("namespace") is None
            else c.name_field(cr, "namespace", "spec.claimRef", names.label_problem)
        )
        if claim_name is not None and claim_ns is not None:
            claim_ref = (claim_ns, claim_name)
    reclaim = spec.get("persistentVolumeReclaimPolicy")
    if reclaim == "Recycle":
        c.error(
            "spec.persistentVolumeReclaimPolicy",
            "'Recycle' is deprecated and not supported (use Retain or Delete)",
        )
        reclaim_policy = None
    else:
        reclaim_policy = c.one_of(
            spec, "persistentVolumeReclaimPolicy", "spec", PV_RECLAIM_POLICIES, "Retain"
        )
    storage_class = _storage_class_name(c, spec, "spec") or ""
    annotations = c.string_map(meta, "annotations", "metadata")
    if c.errors or name is None or source is None or volume_mode is None:
        return None
    assert mount_options is not None and access_modes is not None and reclaim_policy is not None
    return PersistentVolume(
        name=name,
        source=source,
        volume_mode=volume_mode,
        mount_options=mount_options,
        access_modes=access_modes,
        capacity_bytes=capacity_bytes,
        claim_ref=claim_ref,
        origin=origin,
        reclaim_policy=reclaim_policy,
        storage_class_name=storage_class,
        annotations=annotations or {},
    )


def _creation_timestamp(c: _Checker, meta: dict[str, Any]) -> float | None:
    """``metadata.creationTimestamp`` as seconds since the epoch: an RFC 3339 string (YAML may
    already have made it a datetime); a time without a zone is UTC, as in Kubernetes."""
    value = meta.get("creationTimestamp")
    if value is None:
        return None
    when: _dt.datetime | None = None
    if isinstance(value, _dt.datetime):
        when = value
    elif isinstance(value, str) and len(value) <= 64:
        try:
            when = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            when = None
    if when is None:
        c.error("metadata.creationTimestamp", "must be an RFC 3339 time such as 2024-05-01T12:00:00Z")
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def _parse_pvc(c: _Checker, doc: dict[str, Any], origin: Origin) -> PersistentVolumeClaim | None:
    name, namespace, meta = _metadata(c, doc, namespaced=True)
    created = _creation_timestamp(c, meta)
    spec = c.mapping(doc.get("spec"), "spec") or {}
    volume_name = c.name_field(spec, "volumeName", "spec", names.subdomain_problem, required=False)
    volume_mode = c.one_of(spec, "volumeMode", "spec", VOLUME_MODES, None)
    access_modes = c.access_modes(spec, "spec")
    uid = _uid(c, meta, KIND_PVC, namespace, name)
    annotations = c.string_map(meta, "annotations", "metadata")
    storage_class = _storage_class_name(c, spec, "spec")
    request_bytes: int | None = None
    res = c.mapping(spec.get("resources"), "spec.resources")
    if res is not None:
        req = c.mapping(res.get("requests"), "spec.resources.requests")
        if req is not None:
            request_bytes = c.quantity(req, "storage", "spec.resources.requests")
    data_source = _data_source(c, spec, "dataSource", namespace)
    data_source_ref = _data_source(c, spec, "dataSourceRef", namespace)
    if data_source is not None and data_source_ref is not None and data_source != data_source_ref:
        c.error("spec.dataSourceRef", "must match spec.dataSource when both are given")
    if c.errors or name is None or namespace is None or uid is None:
        return None
    assert access_modes is not None
    return PersistentVolumeClaim(
        namespace, name, volume_name, volume_mode, access_modes, origin, created,
        uid=uid,
        storage_class_name=storage_class,
        request_bytes=request_bytes,
        data_source=data_source,
        data_source_ref=data_source_ref,
        annotations=annotations or {},
    )


def _parse_secret(c: _Checker, doc: dict[str, Any], origin: Origin) -> Secret | None:
    name, namespace, _ = _metadata(c, doc, namespaced=True)
    type_ = c.string(doc, "type", "") or "Opaque"
    if len(type_) > names.SUBDOMAIN_MAX or _control_char(type_) is not None:
        c.error("type", f"must be at most {names.SUBDOMAIN_MAX} characters without control characters")
    immutable = c.boolean(doc, "immutable", "")
    data: dict[str, bytes] = {}
    dm = c.mapping(doc.get("data"), "data")
    for k, v in (dm or {}).items():
        field = f"data[{key_text(k)}]"
        why = names.secret_key_problem(k)
        if why:
            c.error(field, why)
            continue
        if v is None:
            data[k] = b""
        elif isinstance(v, bytes):  # YAML !!binary: already decoded
            data[k] = v
        elif not isinstance(v, str):
            c.error(field, f"must be a base64 string, not {_type(v)}")
        else:
            try:
                compact = "".join(v.split())
                data[k] = base64.b64decode(compact.encode("ascii"), validate=True)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                c.error(field, "is not valid base64 (use stringData for plain text)")
    sm = c.mapping(doc.get("stringData"), "stringData")
    for k, v in (sm or {}).items():
        field = f"stringData[{key_text(k)}]"
        why = names.secret_key_problem(k)
        if why:
            c.error(field, why)
            continue
        if v is None:
            data[k] = b""
        elif not isinstance(v, str):
            c.error(field, f"must be a string, not {_type(v)} (quote it)")
        else:
            try:
                data[k] = v.encode("utf-8")  # stringData wins over data, as in Kubernetes
            except UnicodeEncodeError:
                c.error(field, "is not valid text")
    _check_size(c, "data", ((k, len(v)) for k, v in data.items()))
    if c.errors or name is None or namespace is None:
        return None
    return Secret(namespace, name, data, origin, type=type_, immutable=immutable)


# --- shared pieces of the new kinds ---------------------------------------------------------


def _uid(
    c: _Checker, meta: dict[str, Any], kind: str, namespace: str | None, name: str | None
) -> str | None:
    """``metadata.uid``, or a stable one derived from (kind, namespace, name) when absent."""
    if meta.get("uid") is not None:
        return c.name_field(meta, "uid", "metadata", names.uid_problem)
    if namespace is None or name is None:
        return None
    return derived_uid(kind, namespace, name)


def _storage_class_name(c: _Checker, m: dict[str, Any], parent: str) -> str | None:
    """``storageClassName``: None when absent, "" for "no class", else a DNS-1123 subdomain."""
    if m.get("storageClassName") == "":
        return ""
    return c.name_field(m, "storageClassName", parent, names.subdomain_problem, required=False)


def _check_size(c: _Checker, field: str, sizes: Any) -> None:
    """Kubernetes bounds a ConfigMap's or Secret's keys plus values to 1 MiB."""
    total = 0
    for key, size in sizes:
        total += len(key.encode("utf-8", "surrogatepass")) + size
    if total > MAX_DATA_BYTES:
        c.error(field, f"keys and values total {total} bytes, more than the {MAX_DATA_BYTES} allowed")


def _data_source(
    c: _Checker, spec: dict[str, Any], key: str, namespace: str | None
) -> TypedObjectReference | None:
    """A PVC's dataSource/dataSourceRef: a VolumeSnapshot or a PersistentVolumeClaim."""
    field = _join("spec", key)
    m = c.mapping(spec.get(key), field)
    if m is None:
        return None
    api_group = c.string(m, "apiGroup", field) or ""
    kind = c.string(m, "kind", field, required=True)
    name = c.name_field(m, "name", field, names.subdomain_problem)
    ns = m.get("namespace")
    if ns is not None and ns != namespace:
        c.error(_join(field, "namespace"), "cross-namespace data sources are not supported")
        return None
    if kind is None or name is None:
        return None
    if (api_group, kind) not in ((SNAPSHOT_API_GROUP, "VolumeSnapshot"), ("", "PersistentVolumeClaim")):
        c.error(
            field,
            f"{names.shown(kind)} in API group {names.shown(api_group)} is not supported "
            f"(a VolumeSnapshot in {SNAPSHOT_API_GROUP} or a PersistentVolumeClaim in the core group)",
        )
        return None
    return TypedObjectReference(api_group, kind, name)


def _containers(c: _Checker, spec: dict[str, Any], key: str) -> tuple[Container, ...]:
    """``spec.containers`` / ``spec.initContainers``, leniently: only the name and the cpu,
    memory and ephemeral-storage requests and limits (what the downward API reads)."""
    field = _join("spec", key)
    raw = spec.get(key)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.error(field, f"must be a list, not {_type(raw)}")
        return ()
    out: list[Container] = []
    for i, item in enumerate(raw):
        cf = f"{field}[{i}]"
        m = c.mapping(item, cf, required=True)
        if m is None:
            continue
        name = c.name_field(m, "name", cf, names.label_problem)
        resources: dict[str, dict[str, Fraction]] = {"requests": {}, "limits": {}}
        rm = c.mapping(m.get("resources"), _join(cf, "resources"))
        for part in ("requests", "limits"):
            pf = _join(cf, f"resources.{part}")
            pm = c.mapping((rm or {}).get(part), pf)
            for res in CONTAINER_RESOURCES:
                if pm is None or pm.get(res) is None:
                    continue
                try:
                    resources[part][res] = parse_quantity_exact(pm[res])
                except ValueError as exc:
                    c.error(_join(pf, res), str(exc))
        if name is not None:
            out.append(Container(name, resources["requests"], resources["limits"]))
    return tuple(out)


def _check_container_refs(
    c: _Checker, volumes: list[PodVolume], containers: tuple[Container, ...]
) -> None:
    """Every downward API resourceFieldRef names a container of the pod."""
    known = {ct.name for ct in containers}
    for i, vol in enumerate(volumes):
        src = vol.source
        groups: list[tuple[str, tuple[DownwardAPIVolumeFile, ...]]] = []
        if isinstance(src, DownwardAPISource):
            groups.append((f"volume {vol.name!r} downwardAPI", src.items))
        elif isinstance(src, ProjectedSource):
            for j, proj in enumerate(src.sources):
                if isinstance(proj, DownwardAPIProjection):
                    groups.append((f"volume {vol.name!r} projected source {j}", proj.items))
        for where, items in groups:
            for item in items:
                ref = item.resource_field_ref
                if ref is not None and ref.container_name not in known:
                    c.error(
                        "spec.volumes",
                        f"{where}: resourceFieldRef.containerName {ref.container_name!r} "
                        "is not a container of this pod",
                    )


class _File(Protocol):
    path: str


_F = TypeVar("_F", bound=_File)


def _files(
    c: _Checker, m: dict[str, Any], parent: str, parse_file: Callable[[_Checker, dict[str, Any], str], _F | None]
) -> tuple[_F, ...] | None:
    """``items[]`` of a configMap/secret/downwardAPI volume or projection: the files to write.

    The list, its entries being mappings and the paths being unique are the same for every
    source; ``parse_file(c, entry, field)`` reads what one entry says (reporting its own errors
    and returning None when it has any). None when any entry is bad, so nothing is half-built."""
    field = _join(parent, "items")
    raw = m.get("items")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.error(field, f"must be a list, not {_type(raw)}")
        return None
    out: list[_F] = []
    ok = True
    seen: set[str] = set()
    for i, item in enumerate(raw):
        itf = f"{field}[{i}]"
        im = c.mapping(item, itf, required=True)
        file = parse_file(c, im, itf) if im is not None else None
        if file is None:
            ok = False
            continue
        if file.path in seen:
            c.error(_join(itf, "path"), f"duplicate path {names.shown(file.path)}")
            ok = False
            continue
        seen.add(file.path)
        out.append(file)
    return tuple(out) if ok else None


def _key_to_path(c: _Checker, im: dict[str, Any], itf: str) -> KeyToPath | None:
    """One ``items[]`` entry of a configMap/secret volume or projection: {key, path, mode}."""
    key = c.name_field(im, "key", itf, names.secret_key_problem)
    path = c.name_field(im, "path", itf, names.relative_path_problem)
    mode_ok, mode = c.mode(im, "mode", itf)
    if key is None or path is None or not mode_ok:
        return None
    return KeyToPath(key, path, mode)


def _items(c: _Checker, m: dict[str, Any], parent: str) -> tuple[KeyToPath, ...] | None:
    """``items[]`` of a configMap/secret volume or projection: {key, path, mode}."""
    return _files(c, m, parent, _key_to_path)


def _default_mode(c: _Checker, m: dict[str, Any], parent: str) -> int | None:
    ok, mode = c.mode(m, "defaultMode", parent)
    if not ok:
        return None
    return DEFAULT_MODE if mode is None else mode


def _keyed_volume(
    c: _Checker, m: dict[str, Any], field: str, name_key: str, cls: type[ConfigMapVolumeSource | SecretVolumeSource]
) -> ConfigMapVolumeSource | SecretVolumeSource | None:
    """A configMap (``name``) or secret (``secretName``) volume: the object's name, its
    ``items[]``, ``defaultMode`` and ``optional``."""
    before = len(c.errors)
    name = c.name_field(m, name_key, field, names.subdomain_problem)
    items = _items(c, m, field)
    default_mode = _default_mode(c, m, field)
    optional = c.boolean(m, "optional", field)
    if len(c.errors) > before or name is None or items is None or default_mode is None:
        return None
    return cls(name, items, default_mode, optional)


def _field_ref(c: _Checker, m: dict[str, Any], field: str) -> ObjectFieldSelector | None:
    path = c.string(m, "fieldPath", field, required=True)
    api_version = c.string(m, "apiVersion", field) or "v1"
    if path is None:
        return None
    if api_version != "v1":
        c.error(_join(field, "apiVersion"), f"{names.shown(api_version)} is not supported (use v1)")
        return None
    sub = _DOWNWARD_SUBSCRIPT_RE.fullmatch(path)
    if path not in DOWNWARD_FIELD_PATHS and (sub is None or not names.is_qualified_name(sub.group(2))):
        c.error(
            _join(field, "fieldPath"),
            f"{names.shown(path)} is not supported in a volume (one of {', '.join(DOWNWARD_FIELD_PATHS)}, "
            "metadata.labels['<key>'] or metadata.annotations['<key>'])",
        )
        return None
    return ObjectFieldSelector(path, api_version)


def _resource_field_ref(c: _Checker, m: dict[str, Any], field: str) -> ResourceFieldSelector | None:
    container = c.name_field(m, "containerName", field, names.label_problem)
    resource = c.one_of(m, "resource", field, DOWNWARD_RESOURCES, None)
    if m.get("resource") is None:
        c.error(_join(field, "resource"), f"required (one of {', '.join(DOWNWARD_RESOURCES)})")
    divisor = Fraction(1)
    if m.get("divisor") is not None:
        try:
            divisor = parse_quantity_exact(m["divisor"])
        except ValueError as exc:
            c.error(_join(field, "divisor"), str(exc))
            return None
        if divisor == 0:
            divisor = Fraction(1)  # as in Kubernetes: a zero divisor means 1
    if container is None or resource is None:
        return None
    allowed = _CPU_DIVISORS if resource.endswith(".cpu") else _BYTE_DIVISORS
    if divisor not in allowed:
        hint = "1m or 1" if resource.endswith(".cpu") else "1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi or 1Ei"
        c.error(_join(field, "divisor"), f"is not a valid divisor for {resource} (one of {hint})")
        return None
    return ResourceFieldSelector(container, resource, divisor)


def _downward_file(c: _Checker, im: dict[str, Any], itf: str) -> DownwardAPIVolumeFile | None:
    """One ``items[]`` entry of a downwardAPI volume or projection: {path, mode} and exactly
    one of fieldRef/resourceFieldRef."""
    before = len(c.errors)
    path = c.name_field(im, "path", itf, names.relative_path_problem)
    mode_ok, mode = c.mode(im, "mode", itf)
    fm = c.mapping(im.get("fieldRef"), _join(itf, "fieldRef"))
    rm = c.mapping(im.get("resourceFieldRef"), _join(itf, "resourceFieldRef"))
    field_ref = _field_ref(c, fm, _join(itf, "fieldRef")) if fm is not None else None
    res_ref = _resource_field_ref(c, rm, _join(itf, "resourceFieldRef")) if rm is not None else None
    if fm is not None and rm is not None:
        c.error(itf, "may specify only one of fieldRef and resourceFieldRef")
    elif fm is None and rm is None and len(c.errors) == before:
        c.error(itf, "must specify fieldRef or resourceFieldRef")
    if len(c.errors) > before or path is None or not mode_ok:
        return None
    return DownwardAPIVolumeFile(path, field_ref, res_ref, mode)


def _downward_items(
    c: _Checker, m: dict[str, Any], parent: str
) -> tuple[DownwardAPIVolumeFile, ...] | None:
    """``items[]`` of a downwardAPI volume or projection."""
    return _files(c, m, parent, _downward_file)


def _downward_volume(c: _Checker, m: dict[str, Any], field: str) -> DownwardAPISource | None:
    before = len(c.errors)
    items = _downward_items(c, m, field)
    default_mode = _default_mode(c, m, field)
    if len(c.errors) > before or items is None or default_mode is None:
        return None
    return DownwardAPISource(items, default_mode)


def _projected(c: _Checker, m: dict[str, Any], field: str) -> ProjectedSource | None:
    before = len(c.errors)
    default_mode = _default_mode(c, m, field)
    sources: list[Any] = []
    sf = _join(field, "sources")
    raw = m.get("sources")
    if raw is not None and not isinstance(raw, list):
        c.error(sf, f"must be a list, not {_type(raw)}")
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        itf = f"{sf}[{i}]"
        im = c.mapping(item, itf, required=True)
        if im is None:
            continue
        present = [k for k in im if im.get(k) is not None]
        unknown = [k for k in present if k not in PROJECTION_SOURCES]
        if unknown:
            c.error(
                _join(itf, key_text(unknown[0])),
                f"unsupported projection (supported: {', '.join(PROJECTION_SOURCES)})",
            )
            continue
        if len(present) != 1:
            c.error(itf, f"must specify exactly one of {', '.join(PROJECTION_SOURCES)}")
            continue
        key = present[0]
        pf = _join(itf, key)
        pm = c.mapping(im[key], pf, required=True)
        if pm is None:
            continue
        if key in ("configMap", "secret"):
            name = c.name_field(pm, "name", pf, names.subdomain_problem)
            items = _items(c, pm, pf)
            optional = c.boolean(pm, "optional", pf)
            if name is not None and items is not None:
                cls = ConfigMapProjection if key == "configMap" else SecretProjection
                sources.append(cls(name, items, optional))
        elif key == "downwardAPI":
            ditems = _downward_items(c, pm, pf)
            if ditems is not None:
                sources.append(DownwardAPIProjection(ditems))
        else:
            path = c.name_field(pm, "path", pf, names.relative_path_problem)
            audience = c.string(pm, "audience", pf) or ""
            if _control_char(audience) is not None or len(audience) > STRING_MAX:
                c.error(_join(pf, "audience"), "must be a string without control characters")
            ok, exp = c.integer(pm, "expirationSeconds", pf, TOKEN_EXPIRATION_MIN, TOKEN_EXPIRATION_MAX)
            if path is not None and ok:
                sources.append(
                    ServiceAccountTokenProjection(path, audience, exp or TOKEN_EXPIRATION_DEFAULT)
                )
    if len(c.errors) == before:
        _check_projected_paths(c, sources, sf)
    if len(c.errors) > before or default_mode is None:
        return None
    return ProjectedSource(tuple(sources), default_mode)


def _check_projected_paths(c: _Checker, sources: list[Any], field: str) -> None:
    """Two projections may not write the same file (Kubernetes: "conflicting duplicate paths")."""
    seen: set[str] = set()
    for proj in sources:
        if isinstance(proj, ServiceAccountTokenProjection):
            paths = [proj.path]
        else:
            paths = [item.path for item in proj.items]
        for path in paths:
            if path in seen:
                c.error(field, f"conflicting duplicate path {names.shown(path)}")
                return
            seen.add(path)


def _flex(
    c: _Checker, m: dict[str, Any], field: str, inline: bool, pod_namespace: str | None = None
) -> FlexVolumeSource | None:
    """A pod's ``flexVolume`` (secretRef: a name in the pod's namespace) or a PV's
    ``spec.flexVolume`` (secretRef: name and namespace). Option values never reach errors."""
    before = len(c.errors)
    driver = c.name_field(m, "driver", field, names.flex_driver_problem)
    fs_type = c.fs_type(m, "fsType", field)
    _, ref = _secret_ref(c, m, "secretRef", field, inline, pod_namespace)
    read_only = c.boolean(m, "readOnly", field)
    options = c.string_map(m, "options", field, secret=True)
    if len(c.errors) > before or driver is None or options is None:
        return None
    return FlexVolumeSource(driver, fs_type, ref, read_only, options)


# --- the new kinds --------------------------------------------------------------------------


def _parse_configmap(c: _Checker, doc: dict[str, Any], origin: Origin) -> ConfigMap | None:
    name, namespace, _ = _metadata(c, doc, namespaced=True)
    immutable = c.boolean(doc, "immutable", "")
    data: dict[str, str] = {}
    dm = c.mapping(doc.get("data"), "data")
    for k, v in (dm or {}).items():
        field = f"data[{key_text(k)}]"
        why = names.secret_key_problem(k)
        if why:
            c.error(field, why)
        elif v is None:
            data[k] = ""
        elif not isinstance(v, str):
            c.error(field, f"must be a string, not {_type(v)} (quote it)")
        else:
            data[k] = v
    binary: dict[str, bytes] = {}
    bm = c.mapping(doc.get("binaryData"), "binaryData")
    for k, v in (bm or {}).items():
        field = f"binaryData[{key_text(k)}]"
        why = names.secret_key_problem(k)
        if why:
            c.error(field, why)
        elif isinstance(k, str) and dm is not None and k in dm:
            c.error(field, "key is also in data (a key may be in only one of data and binaryData)")
        elif v is None:
            binary[k] = b""
        elif isinstance(v, bytes):
            binary[k] = v
        elif not isinstance(v, str):
            c.error(field, f"must be a base64 string, not {_type(v)}")
        else:
            try:
                binary[k] = base64.b64decode("".join(v.split()).encode("ascii"), validate=True)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                c.error(field, "is not valid base64")
    _check_size(
        c, "data",
        [(k, len(v.encode("utf-8", "surrogatepass"))) for k, v in data.items()]
        + [(k, len(v)) for k, v in binary.items()],
    )
    if c.errors or name is None or namespace is None:
        return None
    return ConfigMap(namespace, name, data, binary, immutable, origin)


def _parse_storageclass(c: _Checker, doc: dict[str, Any], origin: Origin) -> StorageClass | None:
    name, _, _ = _metadata(c, doc, namespaced=False)
    provisioner = c.name_field(doc, "provisioner", "", _provisioner_problem)
    parameters = c.string_map(doc, "parameters", "", secret=True)
    reclaim = c.one_of(doc, "reclaimPolicy", "", SC_RECLAIM_POLICIES, "Delete")
    binding = c.one_of(doc, "volumeBindingMode", "", BINDING_MODES, "Immediate")
    expansion = c.boolean(doc, "allowVolumeExpansion", "")
    mount_options = c.string_list(doc, "mountOptions", "", secret=True)
    topologies = _allowed_topologies(c, doc)
    if c.errors or name is None or provisioner is None or reclaim is None or binding is None:
        return None
    assert parameters is not None and mount_options is not None
    return StorageClass(
        name, provisioner, parameters, reclaim, binding, expansion, mount_options, topologies, origin
    )


def _provisioner_problem(value: object) -> str | None:
    """Kubernetes: a provisioner is a qualified name (``kubernetes.io/no-provisioner``, a CSI
    driver name), compared in lower case."""
    if not isinstance(value, str):
        return f"must be a string, not {_type(value)}"
    if not names.is_qualified_name(value.lower()):
        return (
            f"{names.shown(value)} must be a qualified name ('[prefix/]name', e.g. a CSI driver "
            "name or kubernetes.io/no-provisioner)"
        )
    return None


def _allowed_topologies(c: _Checker, doc: dict[str, Any]) -> tuple[TopologySelectorTerm, ...]:
    """``allowedTopologies``, leniently: matchLabelExpressions' key and values are kept,
    anything else in a term is ignored."""
    raw = doc.get("allowedTopologies")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.error("allowedTopologies", f"must be a list, not {_type(raw)}")
        return ()
    terms: list[TopologySelectorTerm] = []
    for i, term in enumerate(raw):
        tf = f"allowedTopologies[{i}]"
        tm = c.mapping(term, tf, required=True)
        if tm is None:
            continue
        exprs = tm.get("matchLabelExpressions") or []
        if not isinstance(exprs, list):
            c.error(_join(tf, "matchLabelExpressions"), f"must be a list, not {_type(exprs)}")
            continue
        pairs: list[tuple[str, tuple[str, ...]]] = []
        for j, expr in enumerate(exprs):
            ef = f"{tf}.matchLabelExpressions[{j}]"
            em = c.mapping(expr, ef, required=True)
            if em is None:
                continue
            key = c.string(em, "key", ef, required=True)
            values = c.string_list(em, "values", ef)
            if key is not None and values is not None:
                pairs.append((key, values))
        terms.append(TopologySelectorTerm(tuple(pairs)))
    return tuple(terms)


def _parse_csidriver(c: _Checker, doc: dict[str, Any], origin: Origin) -> CSIDriver | None:
    name, _, meta = _metadata(c, doc, namespaced=False)
    if name is not None and names.csi_driver_problem(name):
        c.error("metadata.name", names.csi_driver_problem(name))
    spec = c.mapping(doc.get("spec"), "spec") or {}
    attach = c.optional_bool(spec, "attachRequired", "spec", True)
    pod_info = c.optional_bool(spec, "podInfoOnMount", "spec", False)
    policy = c.one_of(spec, "fsGroupPolicy", "spec", FS_GROUP_POLICIES, "ReadWriteOnceWithFSType")
    modes = c.string_list(spec, "volumeLifecycleModes", "spec")
    for i, mode in enumerate(modes or ()):
        if mode not in LIFECYCLE_MODES:
            c.error(f"spec.volumeLifecycleModes[{i}]", f"{names.shown(mode)} is not one of {', '.join(LIFECYCLE_MODES)}")
    republish = c.boolean(spec, "requiresRepublish", "spec")
    tokens: list[TokenRequest] = []
    raw = spec.get("tokenRequests")
    if raw is not None and not isinstance(raw, list):
        c.error("spec.tokenRequests", f"must be a list, not {_type(raw)}")
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        tf = f"spec.tokenRequests[{i}]"
        tm = c.mapping(item, tf, required=True)
        if tm is None:
            continue
        audience = c.string(tm, "audience", tf)
        ok, exp = c.integer(tm, "expirationSeconds", tf, TOKEN_EXPIRATION_MIN, TOKEN_EXPIRATION_MAX)
        if ok:
            tokens.append(TokenRequest(audience or "", exp))
    if c.errors or name is None or policy is None or modes is None:
        return None
    return CSIDriver(
        name, attach, pod_info, policy, modes or ("Persistent",), republish, tuple(tokens), origin
    )


def _parse_volumesnapshotclass(
    c: _Checker, doc: dict[str, Any], origin: Origin
) -> VolumeSnapshotClass | None:
    name, _, _ = _metadata(c, doc, namespaced=False)
    driver = c.name_field(doc, "driver", "", names.csi_driver_problem)
    if doc.get("deletionPolicy") is None:
        c.error("deletionPolicy", f"required (one of {', '.join(DELETION_POLICIES)})")
    policy = c.one_of(doc, "deletionPolicy", "", DELETION_POLICIES, None)
    parameters = c.string_map(doc, "parameters", "", secret=True)
    if c.errors or name is None or driver is None or policy is None or parameters is None:
        return None
    return VolumeSnapshotClass(name, driver, policy, parameters, origin)


def _parse_volumesnapshot(c: _Checker, doc: dict[str, Any], origin: Origin) -> VolumeSnapshot | None:
    name, namespace, meta = _metadata(c, doc, namespaced=True)
    uid = _uid(c, meta, KIND_VOLUMESNAPSHOT, namespace, name)
    spec = c.mapping(doc.get("spec", _MISSING), "spec", required=True)
    class_name: str | None = None
    pvc_name: str | None = None
    src: dict[str, Any] | None = None
    if spec is not None:
        class_name = c.name_field(
            spec, "volumeSnapshotClassName", "spec", names.subdomain_problem, required=False
        )
        src = c.mapping(spec.get("source", _MISSING), "spec.source", required=True)
    if src is not None:
        if src.get("volumeSnapshotContentName") is not None:
            c.error(
                "spec.source.volumeSnapshotContentName",
                "pre-provisioned snapshots are not supported on one host (use persistentVolumeClaimName)",
            )
        else:
            pvc_name = c.name_field(src, "persistentVolumeClaimName", "spec.source", names.subdomain_problem)
    if c.errors or name is None or namespace is None or uid is None or pvc_name is None:
        return None
    return VolumeSnapshot(namespace, name, uid, class_name, pvc_name, origin)


_PARSERS: dict[str, Callable[[_Checker, dict[str, Any], Origin], Any]] = {
    KIND_POD: _parse_pod,
    KIND_PV: _parse_pv,
    KIND_PVC: _parse_pvc,
    KIND_SECRET: _parse_secret,
    KIND_CONFIGMAP: _parse_configmap,
    KIND_STORAGECLASS: _parse_storageclass,
    KIND_CSIDRIVER: _parse_csidriver,
    KIND_VOLUMESNAPSHOTCLASS: _parse_volumesnapshotclass,
    KIND_VOLUMESNAPSHOT: _parse_volumesnapshot,
}
