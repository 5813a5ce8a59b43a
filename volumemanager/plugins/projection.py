"""What configMap, secret, downwardAPI and projected volumes share: turning their source
objects into an ``AtomicWriter`` payload, a content token, and the per-pod directory life.

The payload rules are the kubelet's (``pkg/volume/configmap``, ``secret``, ``downwardapi``,
``projected``): without ``items`` every key becomes a file named after it; with ``items`` only
those keys, at their paths; a file's mode is its item's ``mode``, else the volume's
``defaultMode``; a missing object or key is an error unless the source is ``optional``.
Downward values are formatted as the kubelet does (labels as sorted ``key="value"`` lines,
resources as ``ceil(value / divisor)``).

Payloads may hold secrets: nothing here logs or formats file contents, and the content token
is a keyed hash (a key random per process), so it tells nothing about the bytes behind it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
from dataclasses import replace
from fractions import Fraction
from typing import Iterable, Mapping

from mount_utils.atomic_writer import DATA_DIR as DATA_LINK
from mount_utils.atomic_writer import AtomicWriteError, AtomicWriter, FileProjection
from mount_utils.cleanup import cleanup_mount_point, remove_empty_dirs
from mount_utils.mounter import MountError
from mount_utils.ownership import RO_MASK as FS_GROUP_FILE_BITS
from mount_utils.paths import PathSafetyError, safe_makedirs
from operation_executor.errors import FinalError, UncertainError, WaitingError
from operation_executor.executor import QUICK_LANE
from operation_executor.plugin import FS_GROUP_WALK, ObjectLookup, VolumePlugin
from operation_executor.types import ConfigMapRef, PodInfo, PodRef, SecretRef, VolumeSpec
from volumemanager.plugins.fsutil import TreeRemovalRefused, remove_tree_one_filesystem, teardown_error

# The volume dir: readable and searchable by any user the pod's processes run as; the files
# carry their own modes. (The kubelet's emptyDir wrapper makes it 0777; nothing but the
# writer has to create entries here, so we do not.)
VOLUME_DIR_MODE = 0o755
# A secret or projected tmpfs holds at most two versions of a payload bounded by the writer
# (1 MiB) during a swap, plus directory entries: a small fixed size keeps a pod that writes
# into its volume from eating the node's memory.
TMPFS_SIZE_BYTES = 4 * 1024 * 1024
SERVICE_ACCOUNT_TOKEN_REASON = (
    "serviceAccountToken needs an API server (--kubeconfig); not available from the manifest dir"
)

_TOKEN_KEY = secrets.token_bytes(32)


class ContentUnavailable(Exception):
    """The content cannot be built now (a missing object or key, a token without an API
    server): ``set_up`` waits for ``waiting_for``; the populator makes it a token of its own."""

    def __init__(self, reason: str, waiting_for: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waiting_for = waiting_for


# --- payload building -----------------------------------------------------------------------


def keyed_payload(kind: str, namespace: str, name: str, data: Mapping[str, bytes] | None,
                  items: Iterable, default_mode: int, optional: bool) -> dict[str, FileProjection]:
    """The files of a ConfigMap or Secret (``kind`` is ``configmap`` or ``secret``, for the
    messages): every key, or only ``items`` (KeyToPath: key, path, mode)."""
    shown = f"{kind} {namespace}/{name}"
    if data is None:
        if optional:
            return {}
        raise ContentUnavailable(f"{shown} not found", shown)
    items = tuple(items)
    out: dict[str, FileProjection] = {}
    if not items:
        for key in sorted(data):
            out[key] = FileProjection(bytes(data[key]), default_mode)
        return out
    for item in items:
        if item.key not in data:
            if optional:
                continue
            raise ContentUnavailable(f"{shown} has no key {item.key!r} (named in items)", shown)
        mode = item.mode if item.mode is not None else default_mode
        out[item.path] = FileProjection(bytes(data[item.key]), mode)
    return out


def go_quote(s: str) -> str:
    """Go's ``%q`` of a string (what the kubelet writes for label and annotation values)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_SUBSCRIPT = re.compile(r"^(metadata\.(?:labels|annotations))\['(.*)'\]$")


def format_map(m: Mapping[str, str]) -> str:
    """The kubelet's formatMap: ``key="value"`` lines sorted by key, no trailing newline."""
    return "\n".join(f"{k}={go_quote(m[k])}" for k in sorted(m))


def field_value(field_path: str, pod: PodInfo) -> str:
    """A downward ``fieldRef`` value of the pod."""
    sub = _SUBSCRIPT.match(field_path)
    if sub is not None:
        table = pod.labels if sub.group(1) == "metadata.labels" else pod.annotations
        return table.get(sub.group(2), "")
    if field_path == "metadata.name":
        return pod.name
    if field_path == "metadata.namespace":
        return pod.namespace
    if field_path == "metadata.uid":
        return pod.uid
    if field_path == "metadata.labels":
        return format_map(pod.labels)
    if field_path == "metadata.annotations":
        return format_map(pod.annotations)
    # The loader refuses every other path; reaching this is a bug, reported not hidden.
    raise FinalError(f"fieldRef {field_path!r} is not supported in a volume", code="INVALID_SOURCE")


def node_allocatable(root_dir: str) -> dict[str, Fraction]:
    """What a container without a limit may use: the node's CPUs, memory and the root dir's
    filesystem (the kubelet uses node allocatable for unset limits)."""
    out: dict[str, Fraction] = {"cpu": Fraction(os.cpu_count() or 1)}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    out["memory"] = Fraction(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    try:
        st = os.statvfs(root_dir)
        out["ephemeral-storage"] = Fraction(st.f_blocks * st.f_frsize)
    except OSError:
        pass
    return out


def resource_value(sel, pod: PodInfo, allocatable: Mapping[str, Fraction]) -> str:
    """A downward ``resourceFieldRef`` value: ``ceil(quantity / divisor)`` as an integer (the
    kubelet's convertResource*ToString); an unset limit is the node's allocatable, an unset
    request the limit given, else 0."""
    for name, requests, limits in pod.containers:
        if name == sel.container_name:
            break
    else:
        raise ContentUnavailable(f"resourceFieldRef names container {sel.container_name!r}, which the pod "
                                 "does not have", f"pod {pod.namespace}/{pod.name} to have container "
                                 f"{sel.container_name}")
    kind, _, resource = sel.resource.partition(".")
    if kind == "limits":
        value = limits.get(resource, allocatable.get(resource, Fraction(0)))
    else:
        value = requests.get(resource, limits.get(resource, Fraction(0)))
    divisor = Fraction(sel.divisor) if sel.divisor else Fraction(1)
    if resource == "cpu":
        # MilliValue on both sides, as the kubelet does: a divisor of 1m counts millicores.
        value = Fraction(math.ceil(Fraction(value) * 1000))
        divisor = Fraction(math.ceil(divisor * 1000))
    return str(math.ceil(Fraction(value) / divisor))


def downward_payload(items: Iterable, default_mode: int, pod: PodInfo | None,
                     allocatable: Mapping[str, Fraction]) -> dict[str, FileProjection]:
    if pod is None:
        raise FinalError("downward API volume without pod metadata in its spec", code="PLUGIN_ERROR")
    out: dict[str, FileProjection] = {}
    for item in items:
        if item.field_ref is not None:
            value = field_value(item.field_ref.field_path, pod)
        else:
            value = resource_value(item.resource_field_ref, pod, allocatable)
        mode = item.mode if item.mode is not None else default_mode
        out[item.path] = FileProjection(value.encode(), mode)
    return out


def content_token(build) -> str:
    """The content token of a payload builder: a keyed hash of every path, mode and byte, or
    of the reason it cannot be built. Equal content, equal token, within one process."""
    h = hashlib.blake2b(key=_TOKEN_KEY, digest_size=16)
    try:
        payload = build()
    except ContentUnavailable as e:
        h.update(b"unavailable\0" + e.reason.encode())
        return h.hexdigest()
    except FinalError as e:
        h.update(b"error\0" + str(e).encode())
        return h.hexdigest()
    for path in sorted(payload):
        p = payload[path]
        h.update(path.encode() + b"\0" + f"{p.mode:o}".encode() + b"\0" + str(len(p.data)).encode() + b"\0")
        h.update(p.data)
    return h.hexdigest()


def configmap_ref(pod_namespace: str, name: str) -> ConfigMapRef:
    return ConfigMapRef(pod_namespace, name)


def secret_ref(pod_namespace: str, name: str) -> SecretRef:
    return SecretRef(pod_namespace, name)


# --- the shared plugin ----------------------------------------------------------------------


class ProjectionPlugin(VolumePlugin):
    """A per-pod directory whose files the daemon writes with the atomic writer; ``memory``
    plugins (secret, projected) put it on a tmpfs so their bytes never reach a disk.
    Subclasses give ``name``, ``can_support`` and ``build_payload``."""

    durable_intents = False  # a mount and regenerable files: see VolumePlugin.durable_intents
    statvfs_stats = True
    memory: bool = False

    def build_payload(self, spec: VolumeSpec, namespace: str, objects: ObjectLookup) -> dict[str, FileProjection]:
        raise NotImplementedError

    def content_generation(self, spec: VolumeSpec, pod: PodRef, objects: ObjectLookup) -> str | None:
        if spec.source is None:
            return None  # a spec rebuilt from disk: only ever torn down
        return content_token(lambda: self.build_payload(spec, pod.namespace, objects))

    # Pods only read these views: like the kubelet (GetAttributes().ReadOnly), the walk adds
    # the read-only group bits, so a secret file stays 0440 for the group, never 0660.
    fs_group_read_only_bits = True

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        """The files are ours: the fsGroup walk runs after each set_up (it changes only what
        is wrong, so after an unchanged write it costs a stat per file)."""
        return FS_GROUP_WALK

    def pod_dir_is_mount_point(self, spec: VolumeSpec) -> bool:
        return self.memory

    def is_present_on_disk(self, spec: VolumeSpec, mount_path: str, is_mount_point: bool) -> bool:
        """Present once a version is published: a dir (or tmpfs) left by a crash before the
        first ``..data`` swap is set up afresh, not adopted as mounted with no files."""
        if self.memory and not is_mount_point:
            return False
        return os.path.lexists(os.path.join(mount_path, DATA_LINK))

    def operation_lane(self, spec: VolumeSpec) -> str:
        return QUICK_LANE  # a mkdir, maybe a tmpfs mount, a few small files: local only

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        return self.host.pod_volume_dir(pod.uid, self.name, outer_name)

    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        """Build the payload first (a missing object touches nothing), then make the dir (and
        its tmpfs), then publish. Called again on a mounted view when the content changed:
        the writer swaps ``..data`` atomically, and writes nothing when nothing changed.
        fsGroup ownership, when wired, runs after this on the published files."""
        try:
            payload = self.build_payload(spec, pod.namespace, self.host)
        except ContentUnavailable as e:
            raise WaitingError(e.reason, e.waiting_for, code="CONTENT_UNAVAILABLE") from None
        if spec.fs_group is not None:
            # The fsGroup walk after set_up adds these bits; writing them already makes the
            # next set_up of the same content compare equal (no new version on a restart).
            payload = {p: replace(f, mode=f.mode | FS_GROUP_FILE_BITS) for p, f in payload.items()}
        path = self.mount_path(spec, pod, outer_name)
        mounter = self.host.mounter
        try:
            safe_makedirs(self.host.root_dir, path, 0o750)
            if not self.memory:
                os.chmod(path, VOLUME_DIR_MODE)
        except OSError as e:
            raise FinalError(f"cannot create {path}: {e.strerror or e}", code="MKDIR_FAILED") from None
        if self.memory and not mounter.is_mount_point(path):
            try:
                mounter.mount_tmpfs(path, size_bytes=TMPFS_SIZE_BYTES, mode=VOLUME_DIR_MODE)
            except MountError as e:
                raise FinalError(str(e), code="MOUNT_FAILED") from None
        try:
            AtomicWriter(path, root=self.host.root_dir).write(payload)
        except AtomicWriteError as e:
            # e names a path, never the bytes.
            raise FinalError(f"invalid {self.display_name} volume content: {e}", code="INVALID_CONTENT") from None
        except PathSafetyError as e:
            raise FinalError(f"refusing to write {path}: {e}", code="UNSAFE_PATH") from None
        except OSError as e:
            # The previous version stays published unless the swap happened: unsure which.
            raise UncertainError(f"cannot write {path}: {e.strerror or e}", code="WRITE_FAILED") from None

    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        """Unmount the tmpfs, or remove the directory on disk (files we wrote, regenerable:
        no look for processes, which the pod's deletion has ended)."""
        mounter = self.host.mounter
        try:
            if os.path.lexists(mount_path) and mounter.is_mount_point(mount_path):
                cleanup_mount_point(mount_path, mounter)
            else:
                remove_tree_one_filesystem(mount_path)
        except UncertainError:
            raise
        except TreeRemovalRefused as e:
            raise UncertainError(f"cannot remove {mount_path}: {e.strerror}: {e.filename}", code="BUSY") from None
        except OSError as e:
            raise teardown_error(mount_path, e, f"cannot tear down {mount_path}") from None
        remove_empty_dirs(os.path.dirname(mount_path), os.path.join(self.host.root_dir, "pods"))
