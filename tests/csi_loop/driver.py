"""csi-loop: a small but real CSI node plugin backed by sparse files on loop devices.

It exists so the daemon's CSI code is tested against a separate process that really stages,
formats, mounts and bind-mounts, and that can be told to fail. Not for production: volume ids
are file names under ``--state-dir``; everything runs as root in the host mount namespace.

Behaviour per the CSI spec's Node service, idempotent on every call. Loop-device state is kept
in ``<state-dir>/state.json`` so a restarted plugin finds its loops; every call is logged as one
JSON line (method, volume id, paths; never secrets) to stderr and ``<state-dir>/calls.log``.
Faults are read from ``<state-dir>/faults.json`` before each call (see ``Faults``).

With ``--controller`` it also serves the Controller service (``controller.LoopController``):
volumes are then created by CreateVolume and, with ``--attach-required``, attached by
ControllerPublishVolume; the node side here then refuses volumes the controller does not know
or did not publish to this node, and uses the device the controller attached.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import grpc

from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from volumemanager._proto.pluginregistration.v1 import api_pb2, api_pb2_grpc

VENDOR_VERSION = "0.1.0"
DEFAULT_SIZE = 64 * 1024 * 1024
DEFAULT_FS = "ext4"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
# External commands (mkfs of a 64 MiB file, losetup) take well under a second; a hung one must
# not hang the test suite.
COMMAND_TIMEOUT_SECONDS = 60

_VOLUME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|K|M|G)?$")
_UNITS = {None: 1, "K": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


class Abort(Exception):
    """A gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"volume_context size {text!r} is not a size")
    return int(m.group(1)) * _UNITS[m.group(2)]


def run(cmd: list[str], ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise Abort(grpc.StatusCode.INTERNAL, f"{cmd[0]} timed out") from None
    if proc.returncode not in ok_codes:
        raise Abort(grpc.StatusCode.INTERNAL, f"{' '.join(cmd[:2])}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> dict[str, str]:
    """mount point -> "major:minor" of the topmost mount there."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            out[_unescape(fields[4])] = fields[2]
    return out


def is_mount_point(path: str) -> bool:
    return os.path.normpath(path) in mount_points()


def dev_of(device: str) -> str:
    st = os.stat(device)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


class State:
    """``state.json``: ``volumes``: the node side's volume id -> {backing, loop, fs_type, staged,
    published{target: kind}}; with the Controller service also ``controller_volumes`` (volume id
    -> {name, capacity_bytes, backing, parameters, content_source, attached{node: {devicePath,
    readonly}}}) and ``snapshots`` (snapshot id -> {name, source_volume_id, path, size_bytes,
    creation_time, pending_polls})."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "state.json")
        self.volumes_dir = os.path.join(state_dir, "volumes")
        self.snapshots_dir = os.path.join(state_dir, "snapshots")
        os.makedirs(self.volumes_dir, exist_ok=True)
        self.lock = threading.RLock()
        self.volumes: dict[str, dict[str, Any]] = {}
        self.controller_volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                data = json.load(f)
            self.volumes = data.get("volumes", {})
            self.controller_volumes = data.get("controller_volumes", {})
            self.snapshots = data.get("snapshots", {})

    def save(self) -> None:
        data: dict[str, Any] = {"volumes": self.volumes}
        if self.controller_volumes or self.snapshots:
            data.update(controller_volumes=self.controller_volumes, snapshots=self.snapshots)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def volume(self, volume_id: str) -> dict[str, Any]:
        return self.volumes.setdefault(
            volume_id,
            {"backing": os.path.join(self.volumes_dir, volume_id + ".img"), "loop": None, "staged": None, "published": {}},
        )


class Faults:
    """``faults.json``: ``{"Method": {"code": "INTERNAL", "message": "...", "count": 1, "sleep": 5}}``.

    ``sleep`` delays the answer (the call then proceeds, like a slow driver); ``code`` fails the
    call with that gRPC status. ``count`` limits the entry to the next N calls (the file is
    rewritten as they are used up); without it the entry applies to every call."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "faults.json")
        self.lock = threading.Lock()

    def take(self, method: str) -> dict[str, Any] | None:
        with self.lock:
            try:
                with open(self.path) as f:
                    faults = json.load(f)
            except (FileNotFoundError, json.JSONDecodeError):
                return None
            entry = faults.get(method)
            if not isinstance(entry, dict):
                return None
            if "count" in entry:
                if int(entry["count"]) <= 0:
                    return None
                entry = dict(entry)
                remaining = int(entry["count"]) - 1
                if remaining > 0:
                    faults[method] = dict(entry, count=remaining)
                else:
                    del faults[method]
                # A name of its own: the test rewrites faults.json at any moment too.
                tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(faults, f)
                os.replace(tmp, self.path)
            return entry


class CallLog:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "calls.log")
        self.lock = threading.Lock()

    def write(self, method: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "method": method, **fields}
        line = json.dumps(record, sort_keys=True)
        with self.lock:
            with open(self.path, "a") as f:
                f.write(line + "\n")
            print(f"csi-loop: {line}", file=sys.stderr, flush=True)


class LoopDriver:
    """The plugin's behaviour, independent of gRPC plumbing."""

    def __init__(
        self, name: str, state_dir: str, node_id: str, stage: bool, endpoint_path: str,
        registration_type: str = "CSIPlugin", supported_versions: tuple[str, ...] = ("1.0.0",),
        controller: bool = False, attach_required: bool = False, topology: dict[str, str] | None = None,
        volume_mount_group: bool = False,
    ) -> None:
        self.name = name
        self.registration_type = registration_type
        self.supported_versions = supported_versions
        self.state_dir = state_dir
        self.node_id = node_id
        self.stage = stage
        self.endpoint_path = endpoint_path
        # Controller mode: volumes exist only once CreateVolume made them; with attach_required
        # the node side uses the loop device ControllerPublishVolume set up (publish_context).
        self.controller = controller
        self.attach_required = attach_required
        self.topology = dict(topology or {})
        # VOLUME_MOUNT_GROUP: ext4 has no gid= mount option, so the group is given to the
        # root of the mounted filesystem (with setgid, so new files inherit it).
        self.volume_mount_group = volume_mount_group
        self.state = State(state_dir)
        self.faults = Faults(state_dir)
        self.log = CallLog(state_dir)

    # --- helpers --------------------------------------------------------------------------

    def capabilities(self) -> list[int]:
        rpc = csi_pb2.NodeServiceCapability.RPC
        caps = [rpc.EXPAND_VOLUME, rpc.GET_VOLUME_STATS]
        if self.stage:
            caps.insert(0, rpc.STAGE_UNSTAGE_VOLUME)
        if self.volume_mount_group:
            caps.append(rpc.VOLUME_MOUNT_GROUP)
        return caps

    def _apply_mount_group(self, cap: csi_pb2.VolumeCapability, path: str) -> None:
        group = cap.mount.volume_mount_group if cap.HasField("mount") else ""
        if not group:
            return
        if not self.volume_mount_group:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_mount_group given but VOLUME_MOUNT_GROUP is not advertised")
        if not group.isdigit():
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"volume_mount_group {group!r} is not a decimal group id")
        os.chown(path, -1, int(group))
        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | stat.S_ISGID | 0o070)

    @staticmethod
    def _check_id(volume_id: str) -> None:
        if not volume_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is required")
        if not _VOLUME_ID.match(volume_id):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"volume_id {volume_id!r} is not a plain file name")

    @staticmethod
    def _check_path(name: str, path: str) -> None:
        if not path:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is required")
        if not os.path.isabs(path):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} {path!r} is not absolute")

    def _ensure_backing(self, vol: dict[str, Any], context: dict[str, str], volume_id: str = "") -> None:
        backing = vol["backing"]
        if self.controller and volume_id and volume_id not in self.state.controller_volumes:
            # In controller mode a volume is made by CreateVolume, never by the node.
            raise Abort(grpc.StatusCode.NOT_FOUND, f"volume {volume_id} does not exist")
        if not os.path.exists(backing):
            size = parse_size(context.get("size", str(DEFAULT_SIZE)))
            with open(backing, "wb") as f:
                f.truncate(size)  # sparse

    def _ensure_loop(self, vol: dict[str, Any]) -> str:
        backing = vol["backing"]
        loop = vol.get("loop")
        if loop and self._loop_backs(loop, backing):
            return loop
        found = run(["losetup", "-j", backing, "-n", "-O", "NAME"]).stdout.split()
        loop = found[0] if found else run(["losetup", "-f", "--show", backing]).stdout.strip()
        vol["loop"] = loop
        self.state.save()
        return loop

    @staticmethod
    def _loop_backs(loop: str, backing: str) -> bool:
        try:
            with open(f"/sys/block/{os.path.basename(loop)}/loop/backing_file") as f:
                return os.path.realpath(f.read().strip()) == os.path.realpath(backing)
        except OSError:
            return False

    def _attached_device(self, volume_id: str, vol: dict[str, Any], publish_context: dict[str, str]) -> str:
        """The loop device ControllerPublishVolume attached for this node (attach-required mode):
        FAILED_PRECONDITION when the volume is not published here, as a real attachable driver
        answers a CO that skipped ControllerPublish."""
        try:
            attached = self.state.controller_volumes.get(volume_id, {}).get("attached", {}).get(self.node_id)
            if attached is None:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {volume_id} is not published to node {self.node_id}")
            device = publish_context.get("devicePath", "")
            if not device:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "publish_context has no devicePath: was ControllerPublishVolume called?")
            if device != attached["devicePath"] or not self._loop_backs(device, vol["backing"]):
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"publish_context devicePath {device} is not the device of volume {volume_id}")
        except Abort:
            if not vol.get("staged") and not vol.get("published"):
                self.state.volumes.pop(volume_id, None)  # refused: leave no half-made node record
            raise
        vol["loop"] = device
        vol["attached_by_controller"] = True
        return device

    def _detach(self, vol: dict[str, Any]) -> None:
        if vol.get("attached_by_controller"):
            vol["loop"] = None  # ControllerUnpublishVolume detaches it, not the node
            return
        loop = vol.get("loop")
        if loop and self._loop_backs(loop, vol["backing"]):
            run(["losetup", "-d", loop])
        vol["loop"] = None

    @staticmethod
    def _format_if_blank(device: str, fs_type: str) -> None:
        probe = run(["blkid", "-p", "-s", "TYPE", "-o", "value", device], ok_codes=(0, 2))
        existing = probe.stdout.strip()
        if existing:
            if existing != fs_type:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"{device} holds {existing}, not {fs_type}")
            return
        if fs_type.startswith("ext"):
            run([f"mkfs.{fs_type}", "-q", "-F", device])
        elif fs_type == "xfs":
            run(["mkfs.xfs", "-q", "-f", device])
        else:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"fs_type {fs_type!r} not supported")

    @staticmethod
    def _fs_type(cap: csi_pb2.VolumeCapability, context: dict[str, str]) -> str:
        return cap.mount.fs_type or context.get("fsType") or DEFAULT_FS

    # --- identity -------------------------------------------------------------------------

    def GetPluginInfo(self, req: Any) -> Any:
        return csi_pb2.GetPluginInfoResponse(name=self.name, vendor_version=VENDOR_VERSION)

    def GetPluginCapabilities(self, req: Any) -> Any:
        exp = csi_pb2.PluginCapability.VolumeExpansion
        caps = [csi_pb2.PluginCapability(volume_expansion=exp(type=exp.ONLINE))]
        if self.controller:
            svc = csi_pb2.PluginCapability.Service
            caps += [
                csi_pb2.PluginCapability(service=svc(type=svc.CONTROLLER_SERVICE)),
                csi_pb2.PluginCapability(service=svc(type=svc.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            ]
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    def Probe(self, req: Any) -> Any:
        from google.protobuf.wrappers_pb2 import BoolValue

        return csi_pb2.ProbeResponse(ready=BoolValue(value=True))

    # --- node -----------------------------------------------------------------------------

    def NodeGetInfo(self, req: Any) -> Any:
        if self.topology:
            return csi_pb2.NodeGetInfoResponse(
                node_id=self.node_id, accessible_topology=csi_pb2.Topology(segments=self.topology)
            )
        return csi_pb2.NodeGetInfoResponse(node_id=self.node_id)

    def NodeGetCapabilities(self, req: Any) -> Any:
        cap = csi_pb2.NodeServiceCapability
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[cap(rpc=cap.RPC(type=t)) for t in self.capabilities()]
        )

    def NodeStageVolume(self, req: csi_pb2.NodeStageVolumeRequest) -> Any:
        if not self.stage:
            raise Abort(grpc.StatusCode.UNIMPLEMENTED, "STAGE_UNSTAGE_VOLUME is not supported")
        self._check_id(req.volume_id)
        self._check_path("staging_target_path", req.staging_target_path)
        if not req.HasField("volume_capability"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_capability is required")
        if not os.path.isdir(req.staging_target_path):
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"staging_target_path {req.staging_target_path} is not a directory")
        context = dict(req.volume_context)
        with self.state.lock:
            if self.controller and req.volume_id not in self.state.controller_volumes:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"volume {req.volume_id} does not exist")
            vol = self.state.volume(req.volume_id)
            if self.attach_required:
                loop = self._attached_device(req.volume_id, vol, dict(req.publish_context))
            else:
                self._ensure_backing(vol, context, req.volume_id)
                loop = self._ensure_loop(vol)
            if req.volume_capability.HasField("mount"):
                fs_type = self._fs_type(req.volume_capability, context)
                mounted = mount_points().get(os.path.normpath(req.staging_target_path))
                if mounted is None:
                    self._format_if_blank(loop, fs_type)
                    cmd = ["mount", "-t", fs_type]
                    if req.volume_capability.mount.mount_flags:
                        cmd += ["-o", ",".join(req.volume_capability.mount.mount_flags)]
                    run(cmd + [loop, req.staging_target_path])
                elif mounted != dev_of(loop):
                    raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"{req.staging_target_path} has another volume mounted")
                vol["fs_type"] = fs_type
                self._apply_mount_group(req.volume_capability, req.staging_target_path)
            vol["staged"] = req.staging_target_path
            self.state.save()
        return csi_pb2.NodeStageVolumeResponse()

    def NodeUnstageVolume(self, req: csi_pb2.NodeUnstageVolumeRequest) -> Any:
        if not self.stage:
            raise Abort(grpc.StatusCode.UNIMPLEMENTED, "STAGE_UNSTAGE_VOLUME is not supported")
        self._check_id(req.volume_id)
        self._check_path("staging_target_path", req.staging_target_path)
        with self.state.lock:
            vol = self.state.volumes.get(req.volume_id)
            # Refuse before touching anything: a stale unstage (its CO crashed and a new one
            # has re-published since) must not pull the staging mount from under a pod.
            if vol is not None and vol["published"]:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {req.volume_id} is still published")
            if is_mount_point(req.staging_target_path):
                run(["umount", req.staging_target_path])
            if vol is not None:
                self._detach(vol)
                del self.state.volumes[req.volume_id]
                self.state.save()
        return csi_pb2.NodeUnstageVolumeResponse()

    def NodePublishVolume(self, req: csi_pb2.NodePublishVolumeRequest) -> Any:
        self._check_id(req.volume_id)
        self._check_path("target_path", req.target_path)
        if not req.HasField("volume_capability"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_capability is required")
        # Inline ephemeral volumes are never staged (the CO has no device layer for them), so
        # they are attached and mounted directly, like with --no-stage.
        direct = not self.stage or req.volume_context.get(EPHEMERAL_KEY) == "true"
        if not direct and not req.staging_target_path:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "staging_target_path is required: STAGE_UNSTAGE_VOLUME is advertised")
        parent = os.path.dirname(os.path.normpath(req.target_path))
        if not os.path.isdir(parent):
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"parent of target_path {parent} does not exist")
        block = req.volume_capability.HasField("block")
        context = dict(req.volume_context)
        with self.state.lock:
            if is_mount_point(req.target_path):
                return csi_pb2.NodePublishVolumeResponse()  # already published
            if not direct:
                vol = self.state.volumes.get(req.volume_id)
                if vol is None or vol.get("staged") != req.staging_target_path:
                    raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {req.volume_id} is not staged at {req.staging_target_path}")
            else:
                ephemeral = req.volume_context.get(EPHEMERAL_KEY) == "true"
                vol = self.state.volume(req.volume_id)
                vol["direct"] = True
                if self.attach_required and not ephemeral:
                    self._attached_device(req.volume_id, vol, dict(req.publish_context))
                else:
                    self._ensure_backing(vol, context, "" if ephemeral else req.volume_id)
            if block:
                loop = self._ensure_loop(vol)
                if not os.path.exists(req.target_path):
                    with open(req.target_path, "w"):
                        pass
                run(["mount", "--bind", loop, req.target_path])
            else:
                os.makedirs(req.target_path, mode=0o750, exist_ok=True)
                if not direct:
                    if not is_mount_point(req.staging_target_path):
                        raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"{req.staging_target_path} is not mounted")
                    run(["mount", "--bind", req.staging_target_path, req.target_path])
                else:
                    loop = self._ensure_loop(vol)
                    fs_type = self._fs_type(req.volume_capability, context)
                    self._format_if_blank(loop, fs_type)
                    flags = list(req.volume_capability.mount.mount_flags)
                    if req.readonly:
                        flags.append("ro")
                    run(["mount", "-t", fs_type] + (["-o", ",".join(flags)] if flags else []) + [loop, req.target_path])
                    vol["fs_type"] = fs_type
                if not req.readonly:
                    self._apply_mount_group(req.volume_capability, req.target_path)
            if req.readonly and (block or not direct):
                run(["mount", "-o", "remount,bind,ro", req.target_path])
            vol["published"][req.target_path] = "block" if block else "mount"
            self.state.save()
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, req: csi_pb2.NodeUnpublishVolumeRequest) -> Any:
        self._check_id(req.volume_id)
        self._check_path("target_path", req.target_path)
        with self.state.lock:
            if is_mount_point(req.target_path):
                run(["umount", req.target_path])
            vol = self.state.volumes.get(req.volume_id)
            if os.path.isdir(req.target_path) and not os.path.islink(req.target_path):
                os.rmdir(req.target_path)
            elif os.path.lexists(req.target_path):
                os.unlink(req.target_path)
            if vol is not None:
                vol["published"].pop(req.target_path, None)
                if vol.get("direct") and not vol["published"]:
                    self._detach(vol)
                    del self.state.volumes[req.volume_id]
                self.state.save()
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeExpandVolume(self, req: csi_pb2.NodeExpandVolumeRequest) -> Any:
        self._check_id(req.volume_id)
        self._check_path("volume_path", req.volume_path)
        with self.state.lock:
            vol = self.state.volumes.get(req.volume_id)
            if vol is None or not vol.get("loop"):
                raise Abort(grpc.StatusCode.NOT_FOUND, f"volume {req.volume_id} is not staged or published here")
            backing, loop = vol["backing"], vol["loop"]
            want = req.capacity_range.required_bytes
            limit = req.capacity_range.limit_bytes
            size = os.path.getsize(backing)
            if limit and limit < size:
                raise Abort(grpc.StatusCode.OUT_OF_RANGE, f"limit_bytes {limit} is below the volume's size {size}: volumes do not shrink")
            if want > size:
                if self.controller:
                    # The image is the controller's to grow (ControllerExpandVolume first).
                    raise Abort(grpc.StatusCode.OUT_OF_RANGE, f"required_bytes {want} exceeds the volume's size {size}: expand it with ControllerExpandVolume first")
                os.truncate(backing, want)
            run(["losetup", "-c", loop])
            fs_type = vol.get("fs_type")
            block = req.volume_capability.HasField("block") if req.HasField("volume_capability") else fs_type is None
            if not block and fs_type:
                if fs_type.startswith("ext"):
                    run(["resize2fs", loop])
                elif fs_type == "xfs":
                    run(["xfs_growfs", req.volume_path])
            return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=os.path.getsize(backing))

    def NodeGetVolumeStats(self, req: csi_pb2.NodeGetVolumeStatsRequest) -> Any:
        self._check_id(req.volume_id)
        self._check_path("volume_path", req.volume_path)
        try:
            st = os.stat(req.volume_path)
        except FileNotFoundError:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"volume_path {req.volume_path} does not exist") from None
        usage = csi_pb2.VolumeUsage
        if stat.S_ISBLK(st.st_mode):
            size = int(run(["blockdev", "--getsize64", req.volume_path]).stdout.strip())
            return csi_pb2.NodeGetVolumeStatsResponse(usage=[usage(total=size, unit=usage.BYTES)])
        vfs = os.statvfs(req.volume_path)
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                usage(
                    total=vfs.f_blocks * vfs.f_frsize,
                    available=vfs.f_bavail * vfs.f_frsize,
                    used=(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
                    unit=usage.BYTES,
                ),
                usage(total=vfs.f_files, available=vfs.f_ffree, used=vfs.f_files - vfs.f_ffree, unit=usage.INODES),
            ]
        )

    # --- registration ---------------------------------------------------------------------

    def GetInfo(self, req: Any) -> Any:
        return api_pb2.PluginInfo(
            type=self.registration_type, name=self.name, endpoint=self.endpoint_path,
            supported_versions=list(self.supported_versions),
        )

    def NotifyRegistrationStatus(self, req: Any) -> Any:
        return api_pb2.RegistrationStatusResponse()


_LOGGED_FIELDS = (
    "volume_id", "staging_target_path", "target_path", "volume_path", "readonly",
    # Controller service
    "name", "node_id", "source_volume_id", "snapshot_id", "max_entries", "starting_token",
)


def _describe(request: Any) -> dict[str, Any]:
    """Loggable fields of a request: ids, paths and flags; secrets only as a key count."""
    out: dict[str, Any] = {}
    for name in _LOGGED_FIELDS:
        if name in request.DESCRIPTOR.fields_by_name and getattr(request, name):
            out[name] = getattr(request, name)
    if "volume_context" in request.DESCRIPTOR.fields_by_name and request.volume_context:
        out["volume_context"] = dict(request.volume_context)  # not secret by the spec
    if "secrets" in request.DESCRIPTOR.fields_by_name and request.secrets:
        out["secret_keys"] = len(request.secrets)
    if "volume_capability" in request.DESCRIPTOR.fields_by_name and request.HasField("volume_capability"):
        out["access_type"] = request.volume_capability.WhichOneof("access_type")
        if request.volume_capability.mount.volume_mount_group:
            out["volume_mount_group"] = request.volume_capability.mount.volume_mount_group
    if isinstance(request, api_pb2.RegistrationStatus):
        out["plugin_registered"] = request.plugin_registered
        if request.error:
            out["error"] = request.error
    if "capacity_range" in request.DESCRIPTOR.fields_by_name and request.HasField("capacity_range"):
        out["required_bytes"] = request.capacity_range.required_bytes
        if request.capacity_range.limit_bytes:
            out["limit_bytes"] = request.capacity_range.limit_bytes
    if "publish_context" in request.DESCRIPTOR.fields_by_name and request.publish_context:
        out["publish_context"] = dict(request.publish_context)  # not secret by the spec
    if isinstance(request, csi_pb2.CreateVolumeRequest):
        if request.parameters:
            out["parameters"] = dict(request.parameters)
        source = request.volume_content_source
        if source.HasField("snapshot"):
            out["content_source"] = {"snapshot_id": source.snapshot.snapshot_id}
        elif source.HasField("volume"):
            out["content_source"] = {"volume_id": source.volume.volume_id}
    return out


# Controller calls that act on one volume. Like real drivers (the sidecars' "operation pending
# for volume" rule), a second call for a volume while one is in flight -- a CO's retry after
# its deadline, or after it was restarted, while the first still runs -- is refused with
# ABORTED instead of racing it (a held CreateVolume finishing after the DeleteVolume that
# followed its retry would leave a volume nobody knows of).
_VOLUME_CALLS = frozenset({"CreateVolume", "DeleteVolume", "ControllerPublishVolume",
                           "ControllerUnpublishVolume", "ControllerExpandVolume"})
_volumes_in_flight: set[str] = set()
_volumes_in_flight_lock = threading.Lock()


def _volume_of(method: str, request: Any) -> str | None:
    if method not in _VOLUME_CALLS:
        return None
    if method == "CreateVolume":
        from tests.csi_loop.controller import derived_id

        return derived_id("vol", request.name) if request.name else None
    return request.volume_id or None


def make_handler(driver: LoopDriver, method: str, owner: Any = None) -> Callable[[Any, grpc.ServicerContext], Any]:
    """``owner.<method>`` (the driver by default) wrapped in the call log and the fault knobs.

    A fault with ``"after": true`` lets the call do its work first and then fails it: the
    answer lost after the storage acted, which a CO must treat as uncertain and retry."""
    impl = getattr(owner if owner is not None else driver, method)

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        driver.log.write(method, **_describe(request))
        volume = _volume_of(method, request)
        if volume is not None:
            with _volumes_in_flight_lock:
                busy = volume in _volumes_in_flight
                if not busy:
                    _volumes_in_flight.add(volume)
            if busy:
                print(f"csi-loop: {method} -> ABORTED: an operation for volume {volume} is in flight",
                      file=sys.stderr, flush=True)
                context.abort(grpc.StatusCode.ABORTED, f"an operation for volume {volume} is already in progress")
        try:
            return _handle(request, context)
        finally:
            if volume is not None:
                with _volumes_in_flight_lock:
                    _volumes_in_flight.discard(volume)

    def _handle(request: Any, context: grpc.ServicerContext) -> Any:
        fault = driver.faults.take(method)
        after = bool(fault and fault.get("after"))
        if fault:
            if fault.get("sleep"):
                time.sleep(float(fault["sleep"]))
            if fault.get("code") and not after:
                code = getattr(grpc.StatusCode, str(fault["code"]))
                context.abort(code, str(fault.get("message") or f"injected {fault['code']}"))
        try:
            response = impl(request)
            if after and fault and fault.get("code"):
                code = getattr(grpc.StatusCode, str(fault["code"]))
                context.abort(code, str(fault.get("message") or f"injected {fault['code']} after the call"))
            return response
        except Abort as err:
            print(f"csi-loop: {method} -> {err.code.name}: {err.message}", file=sys.stderr, flush=True)
            context.abort(err.code, err.message)

    return handler


def servicer(base: type, driver: LoopDriver, methods: list[str], owner: Any = None) -> Any:
    """An instance of the generated servicer ``base`` whose methods go through ``make_handler``."""
    attrs = {m: (lambda h: (lambda self, request, context: h(request, context)))(make_handler(driver, m, owner)) for m in methods}
    return type(f"Loop{base.__name__}", (base,), attrs)()


IDENTITY_METHODS = ["GetPluginInfo", "GetPluginCapabilities", "Probe"]
NODE_METHODS = [
    "NodeGetInfo", "NodeGetCapabilities", "NodeStageVolume", "NodeUnstageVolume", "NodePublishVolume",
    "NodeUnpublishVolume", "NodeExpandVolume", "NodeGetVolumeStats",
]
REGISTRATION_METHODS = ["GetInfo", "NotifyRegistrationStatus"]


def add_csi_services(server: grpc.Server, driver: LoopDriver, controller: Any = None) -> None:
    """Identity and Node; and the Controller service on the same socket when ``controller``
    (a ``controller.LoopController``) is given, as most CSI drivers serve it."""
    csi_pb2_grpc.add_IdentityServicer_to_server(servicer(csi_pb2_grpc.IdentityServicer, driver, IDENTITY_METHODS), server)
    csi_pb2_grpc.add_NodeServicer_to_server(servicer(csi_pb2_grpc.NodeServicer, driver, NODE_METHODS), server)
    if controller is not None:
        csi_pb2_grpc.add_ControllerServicer_to_server(
            servicer(csi_pb2_grpc.ControllerServicer, driver, controller.METHODS, controller), server
        )


def add_registration_service(server: grpc.Server, driver: LoopDriver) -> None:
    api_pb2_grpc.add_RegistrationServicer_to_server(
        servicer(api_pb2_grpc.RegistrationServicer, driver, REGISTRATION_METHODS), server
    )
