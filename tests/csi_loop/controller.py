"""csi-loop's Controller service: volumes, attachments and snapshots as files on this host.

A volume is a sparse image ``<state-dir>/volumes/<volume_id>.img`` cut from a capacity pool
(``--capacity``) so that RESOURCE_EXHAUSTED can happen; "attach" (ControllerPublishVolume) sets
up its loop device and hands the path to the node in ``publish_context["devicePath"]``; a snapshot
is a sparse copy ``<state-dir>/snapshots/<snapshot_id>.img``. Everything is kept in the driver's
``state.json`` (under ``controller_volumes`` and ``snapshots``) so a restarted driver finds it.

It follows the CSI spec's rules rather than the convenience of our tests, because the daemon's
controller side will also meet drivers written elsewhere:

- ids are derived from the CO's name (sha256), so a retried CreateVolume/CreateSnapshot gets
  the same answer; the same name with incompatible arguments is ALREADY_EXISTS;
- deleting or unpublishing something unknown is success (the spec's idempotency), while a
  volume that is still attached or in use on the node is FAILED_PRECONDITION;
- only one node exists (``node_id``): any other node is NOT_FOUND.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from typing import Any, Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import Int64Value

from tests.csi_loop.driver import DEFAULT_SIZE, Abort, LoopDriver, run
from volumemanager._proto.csi.v1 import csi_pb2

# Sizes are rounded up to whole filesystem blocks (a loop device's size must be whole sectors).
SIZE_GRANULARITY = 4096
# The fault entry that makes the next CreateSnapshot report ready_to_use=false for "polls" calls.
SNAPSHOT_NOT_READY_FAULT = "SnapshotNotReady"


def _round_up(size: int) -> int:
    return -(-size // SIZE_GRANULARITY) * SIZE_GRANULARITY


def derived_id(prefix: str, name: str) -> str:
    """A stable, file-name-safe id for a CO-chosen name: a retry after a lost answer must find
    the same object, and names may hold characters no file name should."""
    return f"{prefix}-{hashlib.sha256(name.encode()).hexdigest()[:24]}"


class LoopController:
    """The Controller RPCs; node-side state is shared with ``driver`` under its state lock."""

    METHODS = [
        "CreateVolume", "DeleteVolume", "ControllerPublishVolume", "ControllerUnpublishVolume",
        "ValidateVolumeCapabilities", "ControllerGetCapabilities", "ControllerExpandVolume",
        "CreateSnapshot", "DeleteSnapshot", "ListSnapshots", "GetCapacity",
    ]

    def __init__(self, driver: LoopDriver, capacity_bytes: int) -> None:
        self.driver = driver
        self.state = driver.state
        self.capacity_bytes = capacity_bytes
        os.makedirs(self.state.snapshots_dir, exist_ok=True)

    # --- helpers --------------------------------------------------------------------------

    def _used(self) -> int:
        return sum(int(v["capacity_bytes"]) for v in self.state.controller_volumes.values())

    def _free(self) -> int:
        return max(0, self.capacity_bytes - self._used())

    def _accessible(self, topologies: Any) -> bool:
        """Whether our one segment satisfies one of ``topologies`` (an empty list: anywhere)."""
        if not topologies:
            return True
        mine = self.driver.topology
        return any(all(mine.get(k) == v for k, v in t.segments.items()) for t in topologies)

    def _topology(self) -> list[csi_pb2.Topology]:
        return [csi_pb2.Topology(segments=self.driver.topology)] if self.driver.topology else []

    @staticmethod
    def _check_capabilities(caps: Any, field: str = "volume_capabilities") -> None:
        if not caps:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is required")
        for cap in caps:
            if cap.WhichOneof("access_type") is None:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: access_type (mount or block) is required")
            if cap.access_mode.mode == csi_pb2.VolumeCapability.AccessMode.UNKNOWN:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: access_mode is required")

    def _volume(self, volume_id: str) -> dict[str, Any]:
        if not volume_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is required")
        vol = self.state.controller_volumes.get(volume_id)
        if vol is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"volume {volume_id} does not exist")
        return vol

    def _in_use_on_node(self, volume_id: str) -> bool:
        node = self.state.volumes.get(volume_id)
        return bool(node and (node.get("staged") or node.get("published")))

    @contextlib.contextmanager
    def _quiesced(self, volume_id: str) -> Iterator[None]:
        """Hold the volume's filesystem still while its image is copied, so a snapshot or clone
        of a mounted volume has everything written before the call (fsfreeze flushes it)."""
        node = self.state.volumes.get(volume_id) or {}
        mounts = [node["staged"]] if node.get("staged") else []
        mounts += [t for t, kind in node.get("published", {}).items() if kind == "mount"]
        frozen = None
        for path in mounts:
            if run(["mountpoint", "-q", path], ok_codes=(0, 1, 32)).returncode == 0:
                run(["fsfreeze", "-f", path])
                frozen = path
                break
        try:
            if frozen is None:
                subprocess.run(["sync"], timeout=60, check=False)
            yield
        finally:
            if frozen is not None:
                run(["fsfreeze", "-u", frozen])

    @staticmethod
    def _copy(src: str, dst: str, size: int) -> None:
        """A sparse copy grown to ``size``; written aside and renamed, so a crash mid-copy never
        leaves a half image under the final name."""
        tmp = dst + ".tmp"
        run(["cp", "--sparse=always", src, tmp])
        if size > os.path.getsize(tmp):
            os.truncate(tmp, size)
        os.replace(tmp, dst)

    def _volume_message(self, volume_id: str, vol: dict[str, Any]) -> csi_pb2.Volume:
        out = csi_pb2.Volume(
            volume_id=volume_id, capacity_bytes=int(vol["capacity_bytes"]),
            volume_context=vol.get("volume_context", {}), accessible_topology=self._topology(),
        )
        source = vol.get("content_source")
        if source and "snapshot_id" in source:
            out.content_source.snapshot.snapshot_id = source["snapshot_id"]
        elif source and "volume_id" in source:
            out.content_source.volume.volume_id = source["volume_id"]
        return out

    def _snapshot_message(self, snapshot_id: str, snap: dict[str, Any]) -> csi_pb2.Snapshot:
        created = Timestamp()
        created.FromNanoseconds(int(snap["creation_time_ns"]))
        return csi_pb2.Snapshot(
            snapshot_id=snapshot_id, source_volume_id=snap["source_volume_id"], size_bytes=int(snap["size_bytes"]),
            creation_time=created, ready_to_use=int(snap.get("pending_polls", 0)) <= 0,
        )

    def _poll_snapshot(self, snap: dict[str, Any]) -> None:
        """One poll of a snapshot held "not ready" by the fault knob counts down its polls."""
        if int(snap.get("pending_polls", 0)) > 0:
            snap["pending_polls"] = int(snap["pending_polls"]) - 1
            self.state.save()

    # --- capabilities and capacity --------------------------------------------------------

    def ControllerGetCapabilities(self, req: Any) -> Any:
        rpc = csi_pb2.ControllerServiceCapability.RPC
        types = [rpc.CREATE_DELETE_VOLUME]
        if self.driver.attach_required:
            types.append(rpc.PUBLISH_UNPUBLISH_VOLUME)
        types += [rpc.EXPAND_VOLUME, rpc.CREATE_DELETE_SNAPSHOT, rpc.LIST_SNAPSHOTS, rpc.CLONE_VOLUME, rpc.GET_CAPACITY]
        cap = csi_pb2.ControllerServiceCapability
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[cap(rpc=cap.RPC(type=t)) for t in types])

    def GetCapacity(self, req: csi_pb2.GetCapacityRequest) -> Any:
        with self.state.lock:
            free = self._free() if (not req.HasField("accessible_topology") or self._accessible([req.accessible_topology])) else 0
            return csi_pb2.GetCapacityResponse(available_capacity=free, maximum_volume_size=Int64Value(value=free))

    def ValidateVolumeCapabilities(self, req: csi_pb2.ValidateVolumeCapabilitiesRequest) -> Any:
        self._check_capabilities(req.volume_capabilities)
        with self.state.lock:
            self._volume(req.volume_id)
        # Every access type and mode is supported: there is only one node to share it on.
        return csi_pb2.ValidateVolumeCapabilitiesResponse(
            confirmed=csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=req.volume_context, volume_capabilities=req.volume_capabilities,
                parameters=req.parameters,
            )
        )

    # --- volumes --------------------------------------------------------------------------

    def CreateVolume(self, req: csi_pb2.CreateVolumeRequest) -> Any:
        if not req.name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        self._check_capabilities(req.volume_capabilities)
        required, limit = req.capacity_range.required_bytes, req.capacity_range.limit_bytes
        if required < 0 or limit < 0 or (limit and limit < required):
            raise Abort(grpc.StatusCode.OUT_OF_RANGE, f"capacity_range required_bytes={required} limit_bytes={limit} is not a range")
        source: dict[str, str] | None = None
        if req.volume_content_source.HasField("snapshot"):
            source = {"snapshot_id": req.volume_content_source.snapshot.snapshot_id}
        elif req.volume_content_source.HasField("volume"):
            source = {"volume_id": req.volume_content_source.volume.volume_id}
        volume_id = derived_id("vol", req.name)
        with self.state.lock:
            existing = self.state.controller_volumes.get(volume_id)
            if existing is not None:
                cap = int(existing["capacity_bytes"])
                if (cap < required or (limit and cap > limit) or existing.get("parameters", {}) != dict(req.parameters)
                        or existing.get("content_source") != source
                        or not self._accessible(req.accessibility_requirements.requisite)):
                    raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"volume {req.name!r} exists with other arguments")
                return csi_pb2.CreateVolumeResponse(volume=self._volume_message(volume_id, existing))
            if not self._accessible(req.accessibility_requirements.requisite):
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"no capacity in the requisite topology: this node is {self.driver.topology}")
            src_path, src_size = self._source(source)
            if required and required < src_size:
                raise Abort(grpc.StatusCode.OUT_OF_RANGE, f"required_bytes {required} is smaller than the source ({src_size} bytes)")
            size = _round_up(max(required or (min(DEFAULT_SIZE, limit) if limit else DEFAULT_SIZE), src_size))
            if limit and size > limit:
                raise Abort(grpc.StatusCode.OUT_OF_RANGE, f"no size of {SIZE_GRANULARITY}-byte blocks fits capacity_range [{required}, {limit}]")
            if size > self._free():
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{size} bytes requested, {self._free()} free of {self.capacity_bytes}")
            backing = os.path.join(self.state.volumes_dir, volume_id + ".img")
            if src_path is not None:
                quiet = self._quiesced(source["volume_id"]) if source and "volume_id" in source else contextlib.nullcontext()
                with quiet:
                    self._copy(src_path, backing, size)
            else:
                with open(backing, "wb") as f:
                    f.truncate(size)  # sparse and blank: the node formats it at NodeStage
            vol = {
                "name": req.name, "capacity_bytes": size, "backing": backing, "parameters": dict(req.parameters),
                "content_source": source, "volume_context": dict(req.parameters), "attached": {},
            }
            self.state.controller_volumes[volume_id] = vol
            self.state.save()
            return csi_pb2.CreateVolumeResponse(volume=self._volume_message(volume_id, vol))

    def _source(self, source: dict[str, str] | None) -> tuple[str | None, int]:
        """The image to copy and its size for a content source; NOT_FOUND when it is gone."""
        if source is None:
            return None, 0
        if "snapshot_id" in source:
            snap = self.state.snapshots.get(source["snapshot_id"])
            if snap is None:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"source snapshot {source['snapshot_id']} does not exist")
            return snap["path"], int(snap["size_bytes"])
        vol = self.state.controller_volumes.get(source["volume_id"])
        if vol is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"source volume {source['volume_id']} does not exist")
        return vol["backing"], int(vol["capacity_bytes"])

    def DeleteVolume(self, req: csi_pb2.DeleteVolumeRequest) -> Any:
        if not req.volume_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is required")
        with self.state.lock:
            vol = self.state.controller_volumes.get(req.volume_id)
            if vol is None:
                return csi_pb2.DeleteVolumeResponse()  # already gone: success by the spec
            if vol.get("attached"):
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {req.volume_id} is published to {sorted(vol['attached'])}")
            node = self.state.volumes.get(req.volume_id)
            if self._in_use_on_node(req.volume_id) or (node and node.get("loop")):
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {req.volume_id} is in use on node {self.driver.node_id}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(vol["backing"])
            del self.state.controller_volumes[req.volume_id]
            self.state.volumes.pop(req.volume_id, None)
            self.state.save()
        return csi_pb2.DeleteVolumeResponse()

    def ControllerExpandVolume(self, req: csi_pb2.ControllerExpandVolumeRequest) -> Any:
        required, limit = req.capacity_range.required_bytes, req.capacity_range.limit_bytes
        if not required and not limit:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "capacity_range is required")
        node_expansion = not (req.HasField("volume_capability") and req.volume_capability.HasField("block"))
        with self.state.lock:
            vol = self._volume(req.volume_id)
            current = int(vol["capacity_bytes"])
            if limit and limit < current:
                raise Abort(grpc.StatusCode.OUT_OF_RANGE, f"limit_bytes {limit} is below the volume's size {current}: volumes do not shrink")
            if required <= current:  # already that big: success by the spec's idempotency
                return csi_pb2.ControllerExpandVolumeResponse(capacity_bytes=current, node_expansion_required=node_expansion)
            size = _round_up(required)
            if limit and size > limit:
                raise Abort(grpc.StatusCode.OUT_OF_RANGE, f"no size of {SIZE_GRANULARITY}-byte blocks fits capacity_range [{required}, {limit}]")
            if size - current > self._free():
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{size - current} more bytes needed, {self._free()} free")
            os.truncate(vol["backing"], size)
            loops = {a["devicePath"] for a in vol.get("attached", {}).values()}
            node = self.state.volumes.get(req.volume_id)
            if node and node.get("loop"):
                loops.add(node["loop"])
            for loop in sorted(loops):
                if self.driver._loop_backs(loop, vol["backing"]):
                    run(["losetup", "-c", loop])  # the attached device sees the new size
            vol["capacity_bytes"] = size
            self.state.save()
            return csi_pb2.ControllerExpandVolumeResponse(capacity_bytes=size, node_expansion_required=node_expansion)

    # --- attach ---------------------------------------------------------------------------

    def ControllerPublishVolume(self, req: csi_pb2.ControllerPublishVolumeRequest) -> Any:
        if not self.driver.attach_required:
            raise Abort(grpc.StatusCode.UNIMPLEMENTED, "PUBLISH_UNPUBLISH_VOLUME is not advertised")
        if not req.node_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id is required")
        if not req.HasField("volume_capability"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_capability is required")
        self._check_capabilities([req.volume_capability], "volume_capability")
        with self.state.lock:
            vol = self._volume(req.volume_id)
            if req.node_id != self.driver.node_id:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"node {req.node_id} does not exist (this driver knows {self.driver.node_id})")
            attached = vol.setdefault("attached", {}).get(req.node_id)
            if attached is not None:
                if bool(attached.get("readonly")) != req.readonly:
                    raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"volume {req.volume_id} is published to {req.node_id} with readonly={attached.get('readonly')}")
                if self.driver._loop_backs(attached["devicePath"], vol["backing"]):
                    return csi_pb2.ControllerPublishVolumeResponse(publish_context={"devicePath": attached["devicePath"]})
            # Adopt a loop a crash left set up but unrecorded before making another.
            found = run(["losetup", "-j", vol["backing"], "-n", "-O", "NAME"]).stdout.split()
            loop = found[0] if found else run(
                ["losetup", "-f", "--show"] + (["-r"] if req.readonly else []) + [vol["backing"]]
            ).stdout.strip()
            vol["attached"][req.node_id] = {"devicePath": loop, "readonly": req.readonly}
            self.state.save()
            return csi_pb2.ControllerPublishVolumeResponse(publish_context={"devicePath": loop})

    def ControllerUnpublishVolume(self, req: csi_pb2.ControllerUnpublishVolumeRequest) -> Any:
        if not self.driver.attach_required:
            raise Abort(grpc.StatusCode.UNIMPLEMENTED, "PUBLISH_UNPUBLISH_VOLUME is not advertised")
        if not req.volume_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is required")
        with self.state.lock:
            vol = self.state.controller_volumes.get(req.volume_id)
            if vol is None:
                return csi_pb2.ControllerUnpublishVolumeResponse()  # nothing to detach: success
            # An empty node_id means every node the volume is published to (the spec).
            nodes = [req.node_id] if req.node_id else sorted(vol.get("attached", {}))
            for node_id in nodes:
                attached = vol.get("attached", {}).get(node_id)
                if attached is None:
                    continue
                if node_id == self.driver.node_id and self._in_use_on_node(req.volume_id):
                    # Detaching under a mount would pull the disk from a live filesystem: the CO
                    # must NodeUnstage first. Refused loudly so a wrong order shows in tests.
                    raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {req.volume_id} is still staged or published on node {node_id}")
                if self.driver._loop_backs(attached["devicePath"], vol["backing"]):
                    run(["losetup", "-d", attached["devicePath"]])
                del vol["attached"][node_id]
            self.state.save()
        return csi_pb2.ControllerUnpublishVolumeResponse()

    # --- snapshots ------------------------------------------------------------------------

    def CreateSnapshot(self, req: csi_pb2.CreateSnapshotRequest) -> Any:
        if not req.name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        if not req.source_volume_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "source_volume_id is required")
        snapshot_id = derived_id("snap", req.name)
        with self.state.lock:
            snap = self.state.snapshots.get(snapshot_id)
            if snap is not None:
                if snap["source_volume_id"] != req.source_volume_id:
                    raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"snapshot {req.name!r} exists for volume {snap['source_volume_id']}")
                self._poll_snapshot(snap)
                return csi_pb2.CreateSnapshotResponse(snapshot=self._snapshot_message(snapshot_id, snap))
            vol = self._volume(req.source_volume_id)
            path = os.path.join(self.state.snapshots_dir, snapshot_id + ".img")
            with self._quiesced(req.source_volume_id):
                self._copy(vol["backing"], path, 0)
            not_ready = self.driver.faults.take(SNAPSHOT_NOT_READY_FAULT)
            snap = {
                "name": req.name, "source_volume_id": req.source_volume_id, "path": path,
                "size_bytes": os.path.getsize(path), "creation_time_ns": time.time_ns(),
                "pending_polls": int(not_ready.get("polls", 1)) if not_ready else 0,
            }
            self.state.snapshots[snapshot_id] = snap
            self.state.save()
            return csi_pb2.CreateSnapshotResponse(snapshot=self._snapshot_message(snapshot_id, snap))

    def DeleteSnapshot(self, req: csi_pb2.DeleteSnapshotRequest) -> Any:
        if not req.snapshot_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "snapshot_id is required")
        with self.state.lock:
            snap = self.state.snapshots.pop(req.snapshot_id, None)
            if snap is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(snap["path"])
                self.state.save()
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(self, req: csi_pb2.ListSnapshotsRequest) -> Any:
        if req.max_entries < 0:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "max_entries must not be negative")
        with self.state.lock:
            ids = sorted(self.state.snapshots)
            if req.snapshot_id:
                ids = [i for i in ids if i == req.snapshot_id]
            if req.source_volume_id:
                ids = [i for i in ids if self.state.snapshots[i]["source_volume_id"] == req.source_volume_id]
            start = 0
            if req.starting_token:
                if not req.starting_token.isdigit() or int(req.starting_token) > len(ids):
                    raise Abort(grpc.StatusCode.ABORTED, f"starting_token {req.starting_token!r} is not valid")
                start = int(req.starting_token)
            end = len(ids) if not req.max_entries else min(len(ids), start + req.max_entries)
            entries = []
            for snapshot_id in ids[start:end]:
                snap = self.state.snapshots[snapshot_id]
                self._poll_snapshot(snap)
                entries.append(csi_pb2.ListSnapshotsResponse.Entry(snapshot=self._snapshot_message(snapshot_id, snap)))
            return csi_pb2.ListSnapshotsResponse(entries=entries, next_token=str(end) if end < len(ids) else "")
