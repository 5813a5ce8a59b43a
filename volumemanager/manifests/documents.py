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
from dataclasses import dataclass
from typing import Any, Callable

from operation_executor.types import SecretRef
from volumemanager.manifests import names
from volumemanager.manifests.models import (
    ACCESS_MODES,
    DEFAULT_NAMESPACE,
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
from volumemanager.manifests.quantity import parse_quantity

MAX_ERRORS_PER_DOCUMENT = 20  # enough to fix a document; bounds the output for hostile input
PATH_MAX = 4096  # Linux PATH_MAX
FS_TYPE_MAX = 63
CSI_HANDLE_MAX = 4096  # the handle is hashed into a path, so only a sanity bound is needed
API_VERSION = "v1"

POD_VOLUME_SOURCES = ("emptyDir", "hostPath", "nfs", "persistentVolumeClaim", "csi")
PV_SOURCES = ("local", "hostPath", "nfs", "csi")
# Kubernetes PV volume sources this daemon has no plugin for: named in the error so the user
# knows the PV was understood but cannot be served here.
PV_UNSUPPORTED_SOURCES = (
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "fc",
    "flexVolume",
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
    if api_version is not None and api_version != API_VERSION:
        c.error("apiVersion", f"{names.shown(api_version)} is not supported for {kind} (use v1)")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name")
    if names.subdomain_problem(name):
        return None
    if kind == KIND_PV:
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
    spec = c.mapping(doc.get("spec"), "spec")
    volumes: list[PodVolume] = []
    if spec is not None:
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
    if c.errors or name is None or namespace is None or uid is None:
        return None
    return Pod(namespace, name, uid, tuple(volumes), origin)


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
    if key == "emptyDir" and value is None:
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
        "nodeStageSecretRef", "nodePublishSecretRef", "nodeExpandSecretRef"
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
    )


def _parse_pv(c: _Checker, doc: dict[str, Any], origin: Origin) -> PersistentVolume | None:
    name, _, _ = _metadata(c, doc, namespaced=False)
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
    if c.errors or name is None or source is None or volume_mode is None:
        return None
    assert mount_options is not None and access_modes is not None
    return PersistentVolume(
        name=name,
        source=source,
        volume_mode=volume_mode,
        mount_options=mount_options,
        access_modes=access_modes,
        capacity_bytes=capacity_bytes,
        claim_ref=claim_ref,
        origin=origin,
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
    if c.errors or name is None or namespace is None:
        return None
    assert access_modes is not None
    return PersistentVolumeClaim(namespace, name, volume_name, volume_mode, access_modes, origin, created)


def _parse_secret(c: _Checker, doc: dict[str, Any], origin: Origin) -> Secret | None:
    name, namespace, _ = _metadata(c, doc, namespaced=True)
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
    if c.errors or name is None or namespace is None:
        return None
    return Secret(namespace, name, data, origin)


_PARSERS: dict[str, Callable[[_Checker, dict[str, Any], Origin], Any]] = {
    KIND_POD: _parse_pod,
    KIND_PV: _parse_pv,
    KIND_PVC: _parse_pvc,
    KIND_SECRET: _parse_secret,
}
