"""Desired state from a Kubernetes API server: the pods bound to this node and what they need.

One reflector (``volumemanager.kube.informer``) per kind -- pods with
``spec.nodeName=<node>``, PVs, PVCs, StorageClasses, CSIDrivers, this node's VolumeAttachments
-- and, like the kubelet, one per referenced Secret or ConfigMap (``metadata.name=X`` in its
namespace), started and stopped as pods on this node come to reference them and stop doing so:
the node never reads a Secret no pod of its own needs.

API objects go through the manifest parser (``manifests.documents.parse_document``), so one
code path validates files and API objects; an object that fails validation is reported naming
the API object and field, and keeps its last good version (the manifest dir's rule).

Safety (issue 15, item 2): the source is ``synced`` only after every kind was listed once, and
``failed`` (stale) from the first failure of any kind (unreachable, 401/403, a dropped watch, a
410 relist) until it is listed and watched again; the populator tears nothing down meanwhile. A
pod counts as gone only when it is deleted, in a terminal phase, or past its
``deletionTimestamp`` (which the API server sets to the request time plus the grace period);
a timer wakes the source at that moment, so no loop polls the pods.
"""

from __future__ import annotations

import calendar
import dataclasses
import logging
import threading
import time
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Iterable, Optional

from operation_executor.types import SecretRef
from volumemanager.kube.informer import KindSpec, Obj, ObjKey, Reflector, WatchState
from volumemanager.manifests import models as m
from volumemanager.manifests.documents import parse_document
from volumemanager.sources.base import API_ORIGIN_PREFIX, SourceHealth

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")

# name -> (kind, apiVersion) of what each reflector holds (list items come without them).
_KINDS = {
    "pods": (m.KIND_POD, "v1"),
    "persistentvolumes": (m.KIND_PV, "v1"),
    "persistentvolumeclaims": (m.KIND_PVC, "v1"),
    "storageclasses": (m.KIND_STORAGECLASS, "storage.k8s.io/v1"),
    "csidrivers": (m.KIND_CSIDRIVER, "storage.k8s.io/v1"),
    "volumeattachments": ("VolumeAttachment", "storage.k8s.io/v1"),
}


def parse_time(value: Any) -> Optional[float]:
    """An RFC 3339 time of the API (``2026-11-28T11:00:00Z``) as a Unix time; None if absent/bad."""
    if not isinstance(value, str) or not value:
        return None
    text = value.rstrip("Z").split(".")[0]
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def pod_gone_at(obj: Obj) -> tuple[bool, Optional[float]]:
    """(gone now, the moment it will be gone): terminal phase, or past its deletionTimestamp."""
    phase = (obj.get("status") or {}).get("phase")
    if phase in TERMINAL_PHASES:
        return True, None
    deadline = parse_time((obj.get("metadata") or {}).get("deletionTimestamp"))
    if deadline is None:
        return False, None
    return deadline <= time.time(), deadline


class _Parsed:
    """The parse of one API object at one resourceVersion, and its last good model."""

    __slots__ = ("rv", "obj", "errors")

    def __init__(self, rv: Any, obj: Any, errors: tuple[m.ManifestError, ...]) -> None:
        self.rv, self.obj, self.errors = rv, obj, errors


class ApiServerSource:
    """``DesiredStateSource`` over the API server's pods of one node (see the module doc)."""

    def __init__(self, client: Any, node_name: str, server: str = "", *,
                 reflector_factory: Optional[Callable[..., Reflector]] = None) -> None:
        self.node_name = node_name
        self.server = server or _server_of(client)
        self.name = f"api-server:{self.server}"
        self._client = client
        self._make_reflector = reflector_factory or Reflector
        self._lock = threading.RLock()
        self._on_change: Optional[Callable[[], None]] = None
        self._reflectors: dict[str, Reflector] = {}
        self._objects: dict[tuple[str, str, str], Reflector] = {}  # ("secret"|"configmap", ns, name)
        self._parsed: dict[tuple[str, ObjKey], _Parsed] = {}
        self._refs_memo: dict[int, tuple[m.Pod, frozenset, tuple[str, ...]]] = {}  # see _referenced_objects
        self._snapshot = m.Snapshot.empty()
        self._generation = 0
        self._timer: Optional[threading.Timer] = None
        self._timer_at: Optional[float] = None
        self._started_at = time.time()
        self._stopped = False
        # Called (on the reflector's thread) when this node's VolumeAttachments change: the
        # volumes that wait for one are looked at again (event-driven, kube/attachments.py).
        self.on_attachments_change: list[Callable[[], None]] = []

    # -- DesiredStateSource ------------------------------------------------------------------

    def start(self, on_change: Callable[[], None]) -> None:
        from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, Pod
        from lightkube.resources.storage_v1 import CSIDriver, StorageClass, VolumeAttachment

        self._on_change = on_change
        node = self.node_name
        specs = [
            KindSpec("pods", Pod, field_selector=f"spec.nodeName={node}",
                     accept=lambda o: (o.get("spec") or {}).get("nodeName") == node),
            KindSpec("persistentvolumes", PersistentVolume),
            KindSpec("persistentvolumeclaims", PersistentVolumeClaim),
            KindSpec("storageclasses", StorageClass),
            KindSpec("csidrivers", CSIDriver),
            # The API server offers no field selector on spec.nodeName here: filtered locally.
            KindSpec("volumeattachments", VolumeAttachment,
                     accept=lambda o: (o.get("spec") or {}).get("nodeName") == node),
        ]
        with self._lock:
            for spec in specs:
                self._reflectors[spec.name] = self._make_reflector(self._client, spec, self._changed)
        for r in list(self._reflectors.values()):
            r.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            reflectors = list(self._reflectors.values()) + list(self._objects.values())
            if self._timer is not None:
                self._timer.cancel()
        for r in reflectors:
            r.signal_stop()
        deadline = time.monotonic() + 2.0
        for r in reflectors:
            r.stop(timeout=max(0.0, deadline - time.monotonic()))

    def snapshot(self) -> m.Snapshot:
        return self._snapshot

    def resync(self) -> None:
        with self._lock:
            reflectors = list(self._reflectors.values()) + list(self._objects.values())
        for r in reflectors:
            r.relist()

    @property
    def synced(self) -> bool:
        return all(r.synced for r in list(self._reflectors.values())) and bool(self._reflectors)

    def health(self) -> SourceHealth:
        states = [r.state() for r in list(self._reflectors.values())]
        failed = [s for s in states if s.error is not None]
        synced = bool(states) and all(s.synced for s in states)
        if failed:
            first = min(failed, key=lambda s: s.error_since or 0.0)
            error = "; ".join(f"{s.kind}: {s.error}" for s in failed)
            return SourceHealth(self.name, synced, first.error_since, error, first.error_since)
        return SourceHealth(self.name, synced, None, None, self._started_at)

    # -- status --------------------------------------------------------------------------------

    def watch_states(self) -> list[WatchState]:
        """Every watch: the kinds, then the per-object Secret/ConfigMap watches."""
        with self._lock:
            reflectors = list(self._reflectors.values()) + [self._objects[k] for k in sorted(self._objects)]
        return [r.state() for r in reflectors]

    def volume_attachments(self) -> dict[str, Obj]:
        """This node's VolumeAttachments by name, as the API has them (for attach-aware callers:
        a CSI driver with attachRequired waits for ``status.attached``)."""
        r = self._reflectors.get("volumeattachments")
        return {key[1]: obj for key, obj in (r.items() if r is not None else {}).items()}

    # -- internals -----------------------------------------------------------------------------

    def _changed(self, reflector: Reflector, keys: set[ObjKey]) -> None:
        """A reflector's objects or health changed (on its thread): rebuild, then tell."""
        if self._stopped:
            return
        self._rebuild()
        callback = self._on_change
        if callback is not None:
            callback()
        if reflector is not None and reflector is self._reflectors.get("volumeattachments"):
            for hook in list(self.on_attachments_change):
                try:
                    hook()
                except Exception:  # noqa: BLE001 - a hook's bug must not stop the watch
                    log.exception("VolumeAttachment hook failed")

    def _wake(self) -> None:
        with self._lock:
            self._timer = None
            self._timer_at = None
        self._changed(None, set())  # type: ignore[arg-type]

    def _parse(self, kind: str, api_version: str, obj: Obj, errors: list[m.ManifestError]) -> Any:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        cache_key = (kind, key)
        rv = meta.get("resourceVersion")
        cached = self._parsed.get(cache_key)
        if cached is None or cached.rv != rv or rv is None:
            doc = dict(obj)
            doc["kind"], doc["apiVersion"] = kind, api_version
            where = f"{API_ORIGIN_PREFIX}{kind} {key[0] + '/' if key[0] else ''}{key[1]}"
            result = parse_document(doc, where, 1)
            if result.obj is not None:
                cached = _Parsed(rv, result.obj, ())
            else:  # keep the last good version, report the new one's errors
                cached = _Parsed(rv, cached.obj if cached is not None else None, result.errors)
            self._parsed[cache_key] = cached
        errors.extend(cached.errors)
        return cached.obj

    def _rebuild(self) -> None:
        with self._lock:
            if self._stopped:
                return
            errors: list[m.ManifestError] = []
            seen: set[tuple[str, ObjKey]] = set()

            def models(name: str) -> Iterable[tuple[ObjKey, Any]]:
                kind, version = _KINDS[name]
                reflector = self._reflectors.get(name)
                for key, obj in (reflector.items() if reflector is not None else {}).items():
                    seen.add((kind, key))
                    parsed = self._parse(kind, version, obj, errors)
                    if parsed is not None:
                        yield key, parsed

            pods: dict[str, m.Pod] = {}
            next_wake: Optional[float] = None
            pod_reflector = self._reflectors.get("pods")
            raw_pods = pod_reflector.items() if pod_reflector is not None else {}
            for key, pod in models("pods"):
                gone, at = pod_gone_at(raw_pods.get(key, {}))
                if gone:
                    continue
                if at is not None:
                    next_wake = at if next_wake is None else min(next_wake, at)
                if pod.uid in pods:
                    other = pods[pod.uid]
                    errors.append(m.ManifestError(str(pod.origin), 1, "metadata.uid",
                                                  f"uid {pod.uid} is also pod {other.key}'s", m.KIND_POD, pod.key))
                    continue
                pods[pod.uid] = pod
            pvs = {key[1]: pv for key, pv in models("persistentvolumes")}
            pvcs = dict(models("persistentvolumeclaims"))
            storageclasses = {key[1]: sc for key, sc in models("storageclasses")}
            csidrivers = {key[1]: d for key, d in models("csidrivers")}
            secrets: dict[tuple[str, str], m.Secret] = {}
            configmaps: dict[tuple[str, str], m.ConfigMap] = {}
            wanted = _referenced_objects(pods.values(), pvcs, pvs, self._refs_memo)
            starts, stops = self._update_object_watches(wanted)
            for (what, ns, name), reflector in list(self._objects.items()):
                obj = reflector.get((ns, name))
                if obj is None:
                    continue
                kind = m.KIND_SECRET if what == "secret" else m.KIND_CONFIGMAP
                seen.add((kind, (ns, name)))
                parsed = self._parse(kind, "v1", obj, errors)
                if parsed is not None:
                    (secrets if what == "secret" else configmaps)[(ns, name)] = parsed
            for k in list(self._parsed):
                if k not in seen:
                    del self._parsed[k]
            old = self._snapshot
            new = m.Snapshot(pods, pvs, pvcs, secrets, tuple(errors), old.generation,
                             configmaps=configmaps, storageclasses=storageclasses, csidrivers=csidrivers)
            if not _same_snapshot(old, new):
                self._generation += 1
                self._snapshot = dataclasses.replace(new, generation=self._generation)
            self._schedule(next_wake)
        for r in stops:
            r.stop(timeout=0.0)
        for r in starts:
            r.start()

    def _schedule(self, at: Optional[float]) -> None:
        """One timer, for the earliest deletionTimestamp still ahead."""
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            timer = threading.Timer(max(0.0, at - time.time()) + 0.01, self._wake)
            timer.daemon = True
            self._timer = timer
            timer.start()

    def _update_object_watches(self, wanted: set[tuple[str, str, str]]) -> tuple[list[Reflector], list[Reflector]]:
        """Start a watch for each newly referenced Secret/ConfigMap, stop those no pod needs."""
        from lightkube.resources.core_v1 import ConfigMap, Secret

        starts: list[Reflector] = []
        stops: list[Reflector] = []
        for key in wanted - self._objects.keys():
            what, ns, name = key
            spec = KindSpec(f"{what} {ns}/{name}", Secret if what == "secret" else ConfigMap, namespace=ns,
                            field_selector=f"metadata.name={name}")
            r = self._make_reflector(self._client, spec, self._changed)
            self._objects[key] = r
            starts.append(r)
        for key in self._objects.keys() - wanted:
            stops.append(self._objects.pop(key))
        return starts, stops


def _same_snapshot(a: m.Snapshot, b: m.Snapshot) -> bool:
    def same(x: dict, y: dict) -> bool:
        return len(x) == len(y) and all(x.get(k) is v for k, v in y.items())

    return (same(a.pods, b.pods) and same(a.pvs, b.pvs) and same(a.pvcs, b.pvcs) and same(a.secrets, b.secrets)
            and same(a.configmaps, b.configmaps) and same(a.storageclasses, b.storageclasses)
            and same(a.csidrivers, b.csidrivers) and a.errors == b.errors)


def _secret_refs(value: Any, out: set[tuple[str, str, str]], depth: int = 0) -> None:
    """Every SecretRef inside a volume source (CSI secrets, flexVolume secretRef)."""
    if depth > 4:
        return
    if isinstance(value, SecretRef):
        out.add(("secret", value.namespace, value.name))
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            _secret_refs(getattr(value, f.name), out, depth + 1)
    elif isinstance(value, tuple):
        for v in value:
            _secret_refs(v, out, depth + 1)


def _referenced_objects(pods: Iterable[m.Pod], pvcs: dict, pvs: dict,
                        memo: dict[int, tuple[m.Pod, frozenset, tuple[str, ...]]] | None = None,
                        ) -> set[tuple[str, str, str]]:
    """The Secrets and ConfigMaps the node's pods need: their volumes, and their claims' PVs.

    ``memo`` (id of a pod -> (the pod, what its own volumes name, its claim names)) keeps each
    pod's own part while the pod object is the same one (the parse cache hands out the same
    object for an unchanged resourceVersion): a change then walks the changed pod's volumes,
    not every pod's (each walk of a volume source is reflection over its fields)."""
    out: set[tuple[str, str, str]] = set()
    kept: dict[int, tuple[m.Pod, frozenset, tuple[str, ...]]] = {}
    for pod in pods:
        entry = memo.get(id(pod)) if memo is not None else None
        if entry is None or entry[0] is not pod:
            entry = (pod, *_pod_refs(pod))
        kept[id(pod)] = entry
        out |= entry[1]
        for claim_name in entry[2]:
            pvc = pvcs.get((pod.namespace, claim_name))
            pv = pvs.get(pvc.volume_name) if pvc is not None and pvc.volume_name else None
            if pv is not None:
                _secret_refs(pv.source, out)
    if memo is not None:
        memo.clear()
        memo.update(kept)
    return out


def _pod_refs(pod: m.Pod) -> tuple[frozenset, tuple[str, ...]]:
    """What a pod's own volumes name (Secrets, ConfigMaps), and the claims whose PVs may."""
    out: set[tuple[str, str, str]] = set()
    claims: list[str] = []
    for vol in pod.volumes:
        src = vol.source
        if isinstance(src, m.SecretVolumeSource):
            out.add(("secret", pod.namespace, src.secret_name))
        elif isinstance(src, m.ConfigMapVolumeSource):
            out.add(("configmap", pod.namespace, src.name))
        elif isinstance(src, m.ProjectedSource):
            for p in src.sources:
                if isinstance(p, m.SecretProjection):
                    out.add(("secret", pod.namespace, p.name))
                elif isinstance(p, m.ConfigMapProjection):
                    out.add(("configmap", pod.namespace, p.name))
        elif isinstance(src, m.PVCSource):
            claims.append(src.claim_name)
        else:
            _secret_refs(src, out)
    return frozenset(out), tuple(claims)


def _server_of(client: Any) -> str:
    try:
        return str(client._client.config.cluster.server)
    except AttributeError:
        return "?"
