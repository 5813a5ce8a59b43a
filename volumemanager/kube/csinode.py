"""This node's CSINode object and the Node's CSI annotation and topology labels.

Why: external-attacher finds the driver's node ID only in ``CSINode.spec.drivers`` (since v2.2),
the scheduler counts attachable volumes from ``allocatable.count`` and places topology-bound
volumes by the driver's ``topologyKeys`` and the Node's labels. The kubelet writes all of it
when a driver registers (``nodeinfomanager.go InstallCSIDriver``); for drivers that register
with us, we must.

What is written, as the kubelet does:
- Node metadata (a merge patch with the resourceVersion read, so a concurrent writer is never
  overwritten): annotation ``csi.volume.kubernetes.io/nodeid`` = JSON map driver -> nodeID, and
  each topology segment as a label. A label that exists with another value is a collision:
  left alone and reported (the kubelet refuses the driver; we keep serving it on this host).
- CSINode (GET, then create or update with the resourceVersion read): created with an
  ownerReference to the Node, one entry per driver ``{name, nodeID, topologyKeys (sorted),
  allocatable.count}`` (count only when the driver gave max_volumes_per_node > 0).
- Deregistration removes the driver's entry and annotation key; the CSINode and the labels stay.
Entries of drivers we never installed (the kubelet's own) are kept as they are.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

log = logging.getLogger(__name__)

NODE_ID_ANNOTATION = "csi.volume.kubernetes.io/nodeid"


class DriverLike(Protocol):
    """What the registry's ``DriverInfo`` gives us (narrow on purpose)."""

    name: str
    node_id: str
    max_volumes: int
    topology: tuple[tuple[str, str], ...]


class NodeMissing(Exception):
    """The Node object does not exist (yet): nothing to annotate or own the CSINode."""


@dataclass(frozen=True)
class TopologyCollision:
    driver: str
    key: str
    ours: str
    theirs: str

    def __str__(self) -> str:
        return (f"detected topology value collision: driver {self.driver} reports {self.key}={self.ours} "
                f"but the Node has {self.key}={self.theirs}; label left unchanged")


def driver_entry(d: DriverLike) -> dict:
    """One ``CSINode.spec.drivers`` entry."""
    entry: dict[str, Any] = {"name": d.name, "nodeID": d.node_id,
                             "topologyKeys": sorted({k for k, _ in getattr(d, "topology", ())})}
    if d.max_volumes and d.max_volumes > 0:
        entry["allocatable"] = {"count": int(d.max_volumes)}
    return {k: v for k, v in entry.items() if v is not None}


class CSINodeWriter:
    """Brings the Node and CSINode in line with the registered drivers (``drivers()``)."""

    def __init__(self, node_name: str, drivers: Callable[[], Iterable[DriverLike]]) -> None:
        self.node_name = node_name
        self._drivers = drivers
        self._installed: set[str] = set()  # drivers whose entries we wrote
        self.collisions: list[TopologyCollision] = []
        self._logged_collisions: set[TopologyCollision] = set()
        self.writes = 0

    def write(self, client: Any) -> None:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.core_v1 import Node

        drivers = {d.name: d for d in self._drivers()}
        try:
            node = client.get(Node, self.node_name).to_dict()
        except ApiError as e:
            if e.status.code == 404:
                raise NodeMissing(f"Node {self.node_name} does not exist (yet)") from None
            raise
        gone = self._installed - set(drivers)
        self._patch_node(client, node, drivers, gone)
        self._write_csinode(client, node, drivers, gone)
        self._installed = set(drivers)

    # --- Node metadata ----------------------------------------------------------------------

    def _patch_node(self, client: Any, node: dict, drivers: dict[str, DriverLike], gone: set[str]) -> None:
        from lightkube.resources.core_v1 import Node
        from lightkube.types import PatchType

        meta = node.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        labels = meta.get("labels") or {}
        try:
            ids = json.loads(annotations.get(NODE_ID_ANNOTATION) or "{}")
            if not isinstance(ids, dict):
                ids = {}
        except ValueError:
            ids = {}
        new_ids = {k: v for k, v in ids.items() if k not in gone}
        new_ids.update({name: d.node_id for name, d in drivers.items()})
        new_labels: dict[str, str] = {}
        collisions = []
        for name, d in sorted(drivers.items()):
            for key, value in getattr(d, "topology", ()):
                have = labels.get(key)
                if have is None:
                    new_labels[key] = value
                elif have != value:
                    collisions.append(TopologyCollision(name, key, value, have))
        self.collisions = collisions
        for c in collisions:
            if c not in self._logged_collisions:
                log.warning("Node %s: %s", self.node_name, c)
        self._logged_collisions = set(collisions)
        patch_meta: dict[str, Any] = {}
        if new_ids != ids:
            # A map with no driver left: the annotation goes (null removes a key in a merge patch).
            patch_meta["annotations"] = {NODE_ID_ANNOTATION: json.dumps(new_ids, sort_keys=True,
                                                                        separators=(",", ":")) if new_ids else None}
        if new_labels:
            patch_meta["labels"] = new_labels
        if not patch_meta:
            return
        patch_meta["resourceVersion"] = meta.get("resourceVersion")
        client.patch(Node, self.node_name, {"metadata": patch_meta}, patch_type=PatchType.MERGE)
        self.writes += 1

    # --- CSINode ---------------------------------------------------------------------------

    def _write_csinode(self, client: Any, node: dict, drivers: dict[str, DriverLike], gone: set[str]) -> None:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.storage_v1 import CSINode

        ours = [driver_entry(d) for _, d in sorted(drivers.items())]
        try:
            current = client.get(CSINode, self.node_name).to_dict()
        except ApiError as e:
            if e.status.code != 404:
                raise
            meta = node.get("metadata") or {}
            obj = {"metadata": {"name": self.node_name, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": meta.get("uid")}]},
                   "spec": {"drivers": ours}}
            client.create(CSINode.from_dict(obj))
            self.writes += 1
            return
        spec = current.get("spec") or {}
        old = list(spec.get("drivers") or [])
        keep = [e for e in old if e.get("name") not in drivers and e.get("name") not in gone]
        new = sorted(keep + ours, key=lambda e: e.get("name", ""))
        if _normal(new) == _normal(sorted(old, key=lambda e: e.get("name", ""))):
            return
        current["spec"] = {**spec, "drivers": new}
        client.replace(CSINode.from_dict(current))  # carries the resourceVersion read: 409 if raced
        self.writes += 1


def _normal(entries: list[dict]) -> str:
    """Entries compared as the API returns them (an empty topologyKeys list may come back as None)."""
    out = []
    for e in entries:
        e = {k: v for k, v in e.items() if v not in (None, [], {})}
        out.append(e)
    return json.dumps(out, sort_keys=True)
