"""The kinds the fake API server serves, and how their URLs are spelled.

Why a table: the real API server's paths follow one pattern per (group, version, plural,
namespaced); keeping that in one place lets the router stay generic and the tests name
kinds by their plural, as the wire does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One served resource: where it lives on the wire and what its objects are called."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


KINDS: tuple[Kind, ...] = (
    Kind("", "v1", "pods", "Pod", True, subresources=("status",)),
    Kind("", "v1", "persistentvolumes", "PersistentVolume", False, subresources=("status",)),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, subresources=("status",)),
    Kind("", "v1", "secrets", "Secret", True),
    Kind("", "v1", "configmaps", "ConfigMap", True),
    Kind("", "v1", "nodes", "Node", False, subresources=("status",)),
    Kind("", "v1", "events", "Event", True),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", True, subresources=("token",)),
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("storage.k8s.io", "v1", "storageclasses", "StorageClass", False),
    Kind("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False),
    Kind("storage.k8s.io", "v1", "csinodes", "CSINode", False),
    Kind("storage.k8s.io", "v1", "volumeattachments", "VolumeAttachment", False, subresources=("status",)),
)

BY_PLURAL: dict[tuple[str, str, str], Kind] = {(k.group, k.version, k.plural): k for k in KINDS}
BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}
BY_NAME: dict[str, Kind] = {k.plural: k for k in KINDS} | {k.kind.lower(): k for k in KINDS}


def lookup(kind_or_plural: str) -> Kind:
    """Find a kind by plural ("pods"), kind ("Pod") or lower-case kind ("pod")."""
    k = BY_NAME.get(kind_or_plural) or BY_NAME.get(kind_or_plural.lower()) or BY_KIND.get(kind_or_plural)
    if k is None:
        raise KeyError(f"fake apiserver serves no kind {kind_or_plural!r}")
    return k


def groups() -> dict[str, list[str]]:
    """group -> versions, for discovery (the core group is left out: it is /api)."""
    out: dict[str, list[str]] = {}
    for k in KINDS:
        if k.group and k.version not in out.setdefault(k.group, []):
            out[k.group].append(k.version)
    return out
