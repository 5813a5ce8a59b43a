"""The seam between the controller and the node side: a desired-state source that shows the
provisioned PVs as if they were in the manifests, with their claims bound to them.

The manifest dir's claim has no ``volumeName``: the binding is the daemon's. The overlay
adds each provisioned PV (its ``claimRef`` names the claim, its claim-uid annotation the
claim's uid) and gives that claim ``volume_name`` = the PV, so the populator resolves the
claim like a statically bound one. Nothing in the node path changes; a manifest PV of the
same name always wins (we never shadow what the operator wrote).

Everything else of the wrapped source (start, stop, health, resync...) is passed through.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

from volumemanager.controller.decide import claim_uid_of
from volumemanager.controller.records import ProvisionedVolumes
from volumemanager.manifests import models as m
from volumemanager.sources.base import origin_kind


def merge_provisioned(snap: m.Snapshot, records: dict[str, m.PersistentVolume], generation: int) -> m.Snapshot:
    """``snap`` plus the provisioned PVs, their claims bound (a pure function)."""
    if not records:
        return dataclasses.replace(snap, generation=generation)
    pvs = dict(snap.pvs)
    pvcs = dict(snap.pvcs)
    for name, pv in records.items():
        if name in snap.pvs:
            continue
        pvs[name] = pv
        if pv.claim_ref is None:
            continue
        claim = pvcs.get(pv.claim_ref)
        if claim is not None and not claim.volume_name and claim.uid == claim_uid_of(pv):
            pvcs[pv.claim_ref] = dataclasses.replace(claim, volume_name=name)
    return dataclasses.replace(snap, pvs=pvs, pvcs=pvcs, generation=generation)


def without_api_claims(snap: m.Snapshot) -> m.Snapshot:
    """``snap`` without the PersistentVolumeClaims read from an API server (a pure function)."""
    pvcs = {k: c for k, c in snap.pvcs.items() if origin_kind(c.origin) != "api"}
    if len(pvcs) == len(snap.pvcs):
        return snap
    return dataclasses.replace(snap, pvcs=pvcs)


class ProvisionedOverlaySource:
    """A desired-state source = the wrapped source + the provisioned PV records."""

    def __init__(self, source: Any, records: ProvisionedVolumes) -> None:
        self.source = source
        self.records = records
        self._lock = threading.Lock()
        self._cache: tuple[int, int, m.Snapshot] | None = None
        self._base_generation = 0  # keeps our generation growing if the source's restarts
        self.on_change_hooks: list[Callable[[], None]] = []  # the controller's wake-up
        self._raw_cache: tuple[m.Snapshot, m.Snapshot] | None = None

    def start(self, on_change: Callable[[], None]) -> None:
        def changed() -> None:
            on_change()
            for hook in list(self.on_change_hooks):
                hook()

        self.source.start(changed)

    def raw_snapshot(self) -> m.Snapshot:
        """The wrapped source's own snapshot (the controller decides from it), without the
        claims of an API server: in a cluster its external-provisioner and -resizer own them
        (issue 15, item 4), so the daemon never sends CreateVolume (or expands) for a claim from
        the API. Cached per snapshot of the source."""
        snap = self.source.snapshot()
        cached = self._raw_cache
        if cached is not None and cached[0] is snap:
            return cached[1]
        out = without_api_claims(snap)
        self._raw_cache = (snap, out)
        return out

    def snapshot(self) -> m.Snapshot:
        snap = self.source.snapshot()
        rgen = self.records.generation
        with self._lock:
            cache = self._cache
            if cache is not None and cache[0] == snap.generation and cache[1] == rgen:
                return cache[2]
            # Strictly increasing whenever either side changes: the populator compares it.
            generation = snap.generation + rgen + self._base_generation
            if cache is not None and generation <= cache[2].generation:
                self._base_generation += cache[2].generation - generation + 1
                generation = snap.generation + rgen + self._base_generation
            merged = merge_provisioned(snap, self.records.all(), generation)
            # The source's "pods changed since its generation g" holds against our output for g
            # when the records are the same (they change claims and volumes, never pods).
            delta = snap.pods_changed
            rebased = None
            if delta is not None and cache is not None and cache[0] == delta[0] and cache[1] == rgen:
                rebased = (cache[2].generation, delta[1])
            merged = dataclasses.replace(merged, pods_changed=rebased)
            self._cache = (snap.generation, rgen, merged)
            return merged

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)
