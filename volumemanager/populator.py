"""The populator: turns a desired-state source's snapshot into the desired state of the world.

It resolves each pod volume to a plugin-ready ``VolumeSpec`` (claim -> bound PV -> source) and
keeps, for each volume that cannot be resolved yet, the reason (``explain`` shows it). The
source is pluggable (``volumemanager.sources.base.DesiredStateSource``): today a manifest
directory, later an API server watch; the populator does not care where snapshots come from.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

from operation_executor.plugin import PluginRegistry
from operation_executor.types import ConfigMapRef, PodInfo, PodRef, SecretRef, VolumeSpec, VolumeToMount
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld, UnresolvedVolume
from volumemanager.manifests import models as m
from volumemanager.sources.base import SourceHealth

# The PV annotation the controller's expansion writes (controller/records.py) and the key of
# VolumeSpec.extra the node reconciler reads it from.
NODE_EXPAND_BYTES_ANNOTATION = "volumemanager.io/node-expand-bytes"
NODE_EXPAND_BYTES = "node_expand_bytes"

log = logging.getLogger(__name__)


class Unresolvable(Exception):
    def __init__(self, reason: str, waiting_for: str | None = None, plugin_name: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waiting_for = waiting_for
        self.plugin_name = plugin_name


def _plugin_for_source(plugins: PluginRegistry, source: object) -> str:
    plugin = plugins.find_for_source(source)
    if plugin is None:
        raise Unresolvable(f"unsupported volume source {type(source).__name__}")
    return plugin.name


# What a pod's volume content was built from: ("configmap" | "secret", namespace, name).
ObjectKey = tuple[str, str, str]


class SnapshotObjects:
    """The ``ObjectLookup`` plugins build content from, answered by one snapshot; it records
    every object asked for (found or not), so the populator knows which pods to re-resolve
    when one of them changes."""

    def __init__(self, snap: m.Snapshot) -> None:
        self._snap = snap
        self.seen: set[ObjectKey] = set()

    def get_configmap(self, ref: ConfigMapRef):
        self.seen.add(("configmap", ref.namespace, ref.name))
        return configmap_data(self._snap.configmaps.get((ref.namespace, ref.name)))

    def get_secret(self, ref: SecretRef):
        self.seen.add(("secret", ref.namespace, ref.name))
        secret = self._snap.secrets.get((ref.namespace, ref.name))
        return dict(secret.data) if secret is not None else None


def configmap_data(cm: m.ConfigMap | None) -> dict[str, bytes] | None:
    """A ConfigMap's ``data`` (as UTF-8) and ``binaryData`` as one map of bytes."""
    if cm is None:
        return None
    out = {k: v.encode() for k, v in cm.data.items()}
    out.update(cm.binary_data)
    return out


def pod_info(pod: m.Pod) -> PodInfo:
    """The part of a pod its volumes' content may show (downward API)."""
    return PodInfo(
        uid=pod.uid, namespace=pod.namespace, name=pod.name, labels=dict(pod.labels),
        annotations=dict(pod.annotations), service_account_name=pod.service_account_name,
        containers=tuple((c.name, dict(c.requests), dict(c.limits)) for c in pod.containers),
    )


@dataclass(frozen=True)
class HostPodVolume:
    """One pod volume the node has (or may have) mounted: all the populator needs to know of
    the actual state, to keep one pod's volumes from going to another pod or claim."""

    pod_uid: str
    pod_key: str | None  # "namespace/name"; None when unknown (found on disk at start)
    pv_name: str | None = None
    claim: str | None = None  # "namespace/name" of the claim it was mounted through


# Reads the node's mounted pod volumes (the daemon: from the actual state of the world).
HostVolumesReader = Callable[[], Iterable[HostPodVolume]]


def _claim_order(pvc: m.PersistentVolumeClaim) -> tuple[bool, float, str, str]:
    """Oldest first (claims without a creationTimestamp last), then namespace/name."""
    return (pvc.created is None, pvc.created or 0.0, pvc.namespace, pvc.name)


def bind_claims(
    snap: m.Snapshot, holders: Callable[[], Mapping[str, str]] | None = None
) -> tuple[dict[str, str], frozenset[str]]:
    """Which one claim gets each PV that claims name: (PV name -> claim key, contested PVs).

    Two pods must never share a ReadWriteOnce disk because two claims say the same
    ``spec.volumeName``. A PV whose ``claimRef`` names a claim goes to that claim only;
    otherwise, among the claims that name it, the one already holding it (``holders``:
    PV name -> claim key, asked only when a PV is contested) keeps it, else the oldest, else
    the first in namespace/name order -- the same answer whatever order the files are read in.
    """
    by_pv: dict[str, list[m.PersistentVolumeClaim]] = {}
    for pvc in snap.pvcs.values():
        if pvc.volume_name:
            by_pv.setdefault(pvc.volume_name, []).append(pvc)
    out: dict[str, str] = {}
    contested: set[str] = set()
    held: Mapping[str, str] | None = None
    for pv_name, claims in by_pv.items():
        pv = snap.pvs.get(pv_name)
        if pv is not None and pv.claim_ref is not None:
            out[pv_name] = f"{pv.claim_ref[0]}/{pv.claim_ref[1]}"
            continue
        if len(claims) == 1:
            out[pv_name] = claims[0].key
            continue
        contested.add(pv_name)
        if held is None:
            held = holders() if holders is not None else {}
        keys = {c.key for c in claims}
        holder = held.get(pv_name)
        out[pv_name] = holder if holder in keys else min(claims, key=_claim_order).key
    return out, frozenset(contested)


# (snapshot, its bindings) of the last call without bindings: callers that resolve every pod
# of one snapshot (offline status) compute them once, not once per pod. Holding the snapshot
# keeps its id from being reused.
_last_bindings: tuple[m.Snapshot, dict[str, str]] | None = None


def _bindings_of(snap: m.Snapshot) -> dict[str, str]:
    global _last_bindings
    last = _last_bindings
    if last is not None and last[0] is snap:
        return last[1]
    bindings = bind_claims(snap)[0]
    _last_bindings = (snap, bindings)
    return bindings


def resolve_volume(
    pod: m.Pod, vol: m.PodVolume, snap: m.Snapshot, plugins: PluginRegistry,
    bindings: Mapping[str, str] | None = None,
) -> VolumeSpec:
    """The spec of one pod volume, or ``Unresolvable`` with the reason. ``bindings`` (from
    :func:`bind_claims`) says which claim gets each PV; None means it is computed here."""
    src = vol.source
    if not isinstance(src, m.PVCSource):
        plugin = _plugin_for_source(plugins, src)
        read_only = bool(getattr(src, "read_only", False))
        info = pod_info(pod) if getattr(plugins.find(plugin), "uses_pod_info", False) else None
        return VolumeSpec(name=vol.name, plugin_name=plugin, source=src, read_only=read_only, pod_info=info)
    claim_key = f"{pod.namespace}/{src.claim_name}"
    pvc = snap.pvcs.get((pod.namespace, src.claim_name))
    if pvc is None:
        raise Unresolvable(
            f"persistentvolumeclaim {claim_key} not found", waiting_for=f"persistentvolumeclaim {claim_key}"
        )
    if not pvc.volume_name:
        raise Unresolvable(
            f"persistentvolumeclaim {claim_key} is not bound (spec.volumeName is empty)",
            waiting_for=f"persistentvolumeclaim {claim_key} to be bound",
        )
    pv = snap.pvs.get(pvc.volume_name)
    if pv is None:
        raise Unresolvable(
            f"persistentvolume {pvc.volume_name} (bound to claim {claim_key}) not found",
            waiting_for=f"persistentvolume {pvc.volume_name}",
        )
    if pv.claim_ref is not None and pv.claim_ref != (pvc.namespace, pvc.name):
        ref = f"{pv.claim_ref[0]}/{pv.claim_ref[1]}"
        raise Unresolvable(
            f"persistentvolume {pv.name} is bound to {ref} (its claimRef), not {claim_key}",
            waiting_for=f"persistentvolume {pv.name} to be released by {ref}",
        )
    if bindings is None:
        bindings = _bindings_of(snap)
    owner = bindings.get(pv.name, claim_key)
    if owner != claim_key:
        raise Unresolvable(
            f"persistentvolume {pv.name} is bound to {owner}",
            waiting_for=f"persistentvolume {pv.name} to be released by {owner}",
        )
    claim_mode = pvc.volume_mode or m.FILESYSTEM
    if claim_mode != pv.volume_mode:
        raise Unresolvable(
            f"volumeMode mismatch: claim {claim_key} wants {claim_mode}, persistentvolume {pv.name} is {pv.volume_mode}"
        )
    plugin = _plugin_for_source(plugins, pv.source)
    read_only = src.read_only or bool(getattr(pv.source, "read_only", False))
    return VolumeSpec(
        name=pv.name,
        plugin_name=plugin,
        source=pv.source,
        read_only=read_only,
        volume_mode=pv.volume_mode,
        mount_options=pv.mount_options,
        pv_name=pv.name,
        claim=claim_key,
        access_modes=pvc.access_modes or pv.access_modes,
        capacity_bytes=pv.capacity_bytes,
        extra=_node_expand_extra(pv),
    )


def _node_expand_extra(pv: m.PersistentVolume) -> dict[str, str]:
    """The size NodeExpandVolume must bring the filesystem to (a provisioned volume expanded
    with node_expansion_required): the node reconciler's ``decide`` compares it with the size
    the actual state recorded for the staged volume."""
    value = pv.annotations.get(NODE_EXPAND_BYTES_ANNOTATION)
    return {NODE_EXPAND_BYTES: value} if value and value.isdigit() else {}


def resolve_pod(
    pod: m.Pod, snap: m.Snapshot, plugins: PluginRegistry, bindings: Mapping[str, str] | None = None,
    seen: set[ObjectKey] | None = None,
) -> DesiredPod:
    """``seen`` collects the objects the pod's volume content was built from."""
    ref = PodRef(pod.uid, pod.namespace, pod.name)
    objects = SnapshotObjects(snap)
    resolved: list[VolumeToMount] = []
    unresolved: list[UnresolvedVolume] = []
    if bindings is None and any(isinstance(v.source, m.PVCSource) for v in pod.volumes):
        bindings = _bindings_of(snap)
    for vol in pod.volumes:
        try:
            spec = resolve_volume(pod, vol, snap, plugins, bindings)
            try:
                plugin = plugins.find(spec.plugin_name)
            except KeyError:
                raise Unresolvable(f"volume plugin {spec.plugin_name} is not available", plugin_name=spec.plugin_name)
            generation = plugin.content_generation(spec, ref, objects)
            if generation is not None:
                spec = replace(spec, content_generation=generation)
            resolved.append(
                VolumeToMount(
                    volume_id=plugin.volume_id(spec, ref),
                    pod=ref,
                    outer_name=vol.name,
                    spec=spec,
                    plugin_name=spec.plugin_name,
                    device_mountable=plugin.is_device_mountable(spec),
                    fs_group=pod.fs_group,
                    fs_group_change_policy=pod.fs_group_change_policy,
                )
            )
        except Unresolvable as e:
            unresolved.append(UnresolvedVolume(vol.name, e.plugin_name, e.reason, e.waiting_for))
    if seen is not None:
        seen |= objects.seen
    return DesiredPod(ref, tuple(resolved), tuple(unresolved), source=str(pod.origin))


def refused_pod(pod: m.Pod, owner: str) -> DesiredPod:
    """The desired entry of a pod whose UID is still in use on this node by another pod: none
    of its volumes is resolved, so it inherits nothing, and each says why (``explain``)."""
    reason = (f"pod UID {pod.uid} is still in use on this node by pod {owner}; "
              f"pod {pod.key} gets no volume until {owner}'s volumes are torn down")
    waiting = f"the volumes of pod {owner} (uid {pod.uid}) to be torn down"
    return DesiredPod(
        PodRef(pod.uid, pod.namespace, pod.name), (),
        tuple(UnresolvedVolume(v.name, None, reason, waiting) for v in pod.volumes),
        source=str(pod.origin),
    )


def source_health(source) -> SourceHealth:
    """The source's health; a source without ``health()`` is ok once ``synced``."""
    health = getattr(source, "health", None)
    if callable(health):
        return health()
    synced = bool(getattr(source, "synced", True))
    return SourceHealth(getattr(source, "name", type(source).__name__), synced)


def _same_objects(old: Mapping, new: Mapping) -> bool:
    """Whether two snapshot maps hold the very same objects under the same keys."""
    return old is new or (len(old) == len(new) and all(old.get(k) is v for k, v in new.items()))


class DesiredStatePopulator:
    """Keeps the DSW equal to the source's latest snapshot; reports which volumes changed."""

    def __init__(
        self,
        source,
        dsw: DesiredStateOfWorld,
        plugins: PluginRegistry,
        on_volumes_changed: Callable[[set[str]], None],
        host_volumes: HostVolumesReader | None = None,
        host_owner: Callable[[str], str | None] | None = None,
    ) -> None:
        self.source = source
        self._dsw = dsw
        self._plugins = plugins
        self._on_volumes_changed = on_volumes_changed
        self._host_volumes = host_volumes
        # uid -> "namespace/name" of the pod the node has volumes mounted for under it: one
        # question about one UID (asked for each new pod), not a copy of every volume.
        self._host_owner = host_owner
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._snapshot: m.Snapshot = m.Snapshot.empty()
        self._populated = False
        # uid -> the Pod object the DSW entry was resolved from. The store hands out the same
        # objects for files that did not change, so a pod whose object (and every claim and
        # volume) is the one resolved last time needs no work: a change costs in proportion
        # to what changed, not to the number of pods.
        self._resolved_from: dict[str, m.Pod] = {}
        # PV -> the claim that gets it, and the PVs more than one claim names.
        self._bindings: dict[str, str] = {}
        self._contested: frozenset[str] = frozenset()
        # Pods held back by the node's actual state (their UID still in use by another pod,
        # or a PV still held by another claim): re-resolved on every sync and recheck.
        self._recheck: set[str] = set()
        self._refused: dict[str, str] = {}  # uid -> the pod key still using it (logged once)
        # Called (outside the lock) when the source is read whole again after a failed read:
        # the unmount gate opens, so volumes kept meanwhile (found on disk at start, or of
        # pods the DSW never had) must be looked at now, not at the next full pass. Their
        # teardown changes no desired volume, so ``on_volumes_changed`` would not say so.
        self.on_source_recovered: list[Callable[[], None]] = []
        self._last_healthy: bool | None = None
        # Which pods' volume content was built from which ConfigMap/Secret (found or not), so
        # that a change of one re-resolves just those pods: the update follows the object's
        # change event, never a sweep over all pods.
        self._objects_of: dict[str, frozenset[ObjectKey]] = {}
        self._pods_of: dict[ObjectKey, set[str]] = {}

    def start(self) -> None:
        self.source.start(self.sync)
        self.sync()

    def stop(self) -> None:
        self.source.stop()

    def source_healths(self) -> list[SourceHealth]:
        """One entry per desired-state source (a combined source has several)."""
        healths = getattr(self.source, "healths", None)
        if callable(healths):
            return list(healths())
        return [source_health(self.source)]

    @property
    def has_added_pods(self) -> bool:
        """True once a snapshot of a source read whole has reached the DSW, and the source is
        not failed now: before that nothing may be unmounted, or a restart (or a manifest dir
        that went missing) would tear down the volumes of running pods."""
        return self._populated and source_health(self.source).ok

    @property
    def needs_recheck(self) -> bool:
        """Some pod waits for the node to release a UID or a PV: look again after unmounts."""
        return bool(self._recheck)

    @property
    def snapshot(self) -> m.Snapshot:
        return self._snapshot

    def sync(self, force: bool = False, recheck: bool = False) -> set[str]:
        """Bring the DSW up to the source's snapshot. ``recheck``: the actual state changed
        (an unmount finished), so the pods held back by it are looked at again."""
        changed, recovered = self._sync(force, recheck)
        if recovered:
            self._source_recovered()
        return changed

    def _sync(self, force: bool, recheck: bool) -> tuple[set[str], bool]:
        """``sync``'s work: (the changed volume ids, whether the source was just read whole
        again after a failed read)."""
        with self._lock:
            healthy = source_health(self.source).ok  # before the snapshot: it then covers the read
            recovered = healthy and self._last_healthy is False
            self._last_healthy = healthy
            snap = self.source.snapshot()
            if not force and not recheck and snap.generation == self._generation:
                if healthy:
                    self._populated = True
                return set(), recovered
            changed: set[str] = set()
            # The pods to look at: only those the source says changed since the snapshot this
            # sync saw last, when it can say (a change at 10,000 volumes no longer walks every
            # pod); else all of them.
            delta = getattr(snap, "pods_changed", None)
            if force or delta is None or delta[0] != self._generation:
                delta = None
            if delta is None:
                gone = self._dsw.pod_uids() - set(snap.pods)
            else:
                gone = {uid for uid in delta[1] if uid not in snap.pods and self._dsw.get_pod(uid) is not None}
            if gone:
                volumes = 0
                for uid in gone:
                    dp = self._dsw.get_pod(uid)
                    volumes += len(dp.volumes) if dp is not None else 0
                    changed |= self._dsw.remove_pod(uid)
                    self._resolved_from.pop(uid, None)
                    self._recheck.discard(uid)
                    self._refused.pop(uid, None)
                    self._index_objects(uid, frozenset())
                log.info("%d pods are gone from %s: %d volumes of %d pods will be torn down",
                         len(gone), getattr(self.source, "name", "the source"), volumes, len(gone),
                         extra={"pods": len(gone), "volumes": volumes})
            same_claims = (not force and _same_objects(self._snapshot.pvcs, snap.pvcs)
                           and _same_objects(self._snapshot.pvs, snap.pvs))
            old_bindings = self._bindings
            if not same_claims or self._contested:
                self._bindings, self._contested = bind_claims(snap, self._pv_holders)
            # Resolution reads the pod, the claims and the volumes (never another pod), and
            # the bindings, which are the same unless a claim or volume changed.
            reuse = same_claims and self._bindings == old_bindings
            stale = self._pods_of_changed_objects(snap) if reuse else set()
            host_owners: Callable[[str], str | None] | None = None
            if delta is None or not reuse:
                candidates: Iterable[tuple[str, m.Pod]] = snap.pods.items()
            else:
                look = set(delta[1]) | self._recheck | stale | set(self._refused)
                candidates = [(uid, snap.pods[uid]) for uid in sorted(look) if uid in snap.pods]
            for uid, pod in candidates:
                if reuse and uid not in self._recheck and uid not in stale and self._resolved_from.get(uid) is pod:
                    continue
                owner = None
                old = self._dsw.get_pod(uid)
                if old is None or old.pod.key != pod.key or uid in self._refused:
                    if host_owners is None:
                        host_owners = self._host_owners()
                    owner = host_owners(uid)
                if owner is not None and owner != pod.key:
                    desired = refused_pod(pod, owner)
                    if self._refused.get(uid) != owner:
                        log.warning("pod %s refused: its UID %s is still in use on this node by pod %s; "
                                    "it gets no volume until those are torn down", pod.key, uid, owner)
                    self._refused[uid] = owner
                    self._recheck.add(uid)
                else:
                    if self._refused.pop(uid, None) is not None:
                        log.info("pod %s: UID %s is free now", pod.key, uid)
                    seen: set[ObjectKey] = set()
                    # Several sources: a pod resolves its claims in its own (None: the merged one).
                    own = self._own_snapshot(uid)
                    desired = resolve_pod(pod, own or snap, self._plugins, None if own else self._bindings, seen)
                    self._index_objects(uid, frozenset(seen))
                    if own is not None or any(u.reason.startswith("persistentvolume ") and " is bound to " in u.reason
                                              for u in desired.unresolved):
                        self._recheck.add(uid)  # own: its objects are not what the reuse check compares
                    else:
                        self._recheck.discard(uid)
                changed |= self._dsw.set_pod(desired)
                self._resolved_from[uid] = pod
            self._snapshot = snap
            self._generation = snap.generation
            if healthy:
                self._populated = True
        if changed:
            self._on_volumes_changed(changed)
        return changed, recovered

    def resolve_again(self, uids: Iterable[str]) -> set[str]:
        """The content of these pods' volumes changed outside the snapshot (a service-account
        token was issued or refreshed): re-resolve just them now, so a changed content token
        reaches the reconciler. A uid the DSW does not have is ignored."""
        with self._lock:
            wanted = set(uids) & set(self._resolved_from)
            if not wanted:
                return set()
            self._recheck |= wanted
        return self.sync(recheck=True)

    def _source_recovered(self) -> None:
        for hook in list(self.on_source_recovered):
            try:
                hook()
            except Exception:  # noqa: BLE001 - a hook's bug must not stop the desired state
                log.exception("source-recovered hook failed")

    def _index_objects(self, uid: str, objects: frozenset[ObjectKey]) -> None:
        old = self._objects_of.get(uid, frozenset())
        if old == objects:
            return
        for key in old - objects:
            pods = self._pods_of.get(key)
            if pods is not None:
                pods.discard(uid)
                if not pods:
                    del self._pods_of[key]
        for key in objects - old:
            self._pods_of.setdefault(key, set()).add(uid)
        if objects:
            self._objects_of[uid] = objects
        else:
            self._objects_of.pop(uid, None)

    def _pods_of_changed_objects(self, snap: m.Snapshot) -> set[str]:
        """The pods whose content was built from a ConfigMap or Secret that differs between
        the last snapshot and ``snap`` (added, removed or replaced: the store hands out the
        same object for a file that did not change)."""
        if not self._pods_of:
            return set()
        out: set[str] = set()
        for kind, old, new in (("configmap", self._snapshot.configmaps, snap.configmaps),
                               ("secret", self._snapshot.secrets, snap.secrets)):
            if _same_objects(old, new):
                continue
            for key in old.keys() | new.keys():
                if old.get(key) is not new.get(key):
                    out |= self._pods_of.get((kind, key[0], key[1]), set())
        return out

    def _own_snapshot(self, uid: str) -> m.Snapshot | None:
        """The snapshot of pod ``uid``'s own source when the source combines several and its
        source lost a claim/PV/Secret key to another; None otherwise (the usual case)."""
        own = getattr(self.source, "snapshot_for_pod", None)
        return own(uid) if callable(own) else None

    def _read_host(self) -> list[HostPodVolume]:
        if self._host_volumes is None:
            return []
        return list(self._host_volumes())

    def _host_owners(self) -> Callable[[str], str | None]:
        """uid -> "namespace/name" of the pod whose volumes the node has mounted under it
        (volumes found on disk with no known pod do not count): the narrow per-UID lookup when
        given, else one map built from the host's volumes for this sync."""
        if self._host_owner is not None:
            return self._host_owner
        owners = {v.pod_uid: v.pod_key for v in self._read_host() if v.pod_key}
        return owners.get

    def _pv_holders(self) -> dict[str, str]:
        """PV -> the claim holding it: mounted through it on the node, else resolved through it
        in the desired state. Asked only when two claims name one PV."""
        held: dict[str, str] = {}
        for vtm in self._dsw.volumes_to_mount():
            if vtm.spec.pv_name and vtm.spec.claim:
                held.setdefault(vtm.spec.pv_name, vtm.spec.claim)
        for v in self._read_host():
            if v.pv_name and v.claim:
                held[v.pv_name] = v.claim
        return held

    def get_secret(self, ref):
        secret = self._snapshot.secret(ref)
        return dict(secret.data) if secret is not None else None

    def get_configmap(self, ref: ConfigMapRef):
        return configmap_data(self._snapshot.configmaps.get((ref.namespace, ref.name)))
