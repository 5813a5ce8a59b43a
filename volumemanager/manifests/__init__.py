"""Manifests: the desired state as Kubernetes v1 objects (Pod, PersistentVolume,
PersistentVolumeClaim, Secret) read from files.

``models`` holds the validated frozen types, ``loader`` turns one file into objects and errors,
``store`` keeps the last good objects of every file and builds snapshots.
"""

from volumemanager.manifests.loader import FileResult, is_manifest_name, load_bytes, load_file
from volumemanager.manifests.models import (
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
    Snapshot,
    derived_pod_uid,
)
from volumemanager.manifests.quantity import parse_quantity
from volumemanager.manifests.store import ManifestStore

__all__ = [
    "CSISource",
    "EmptyDirSource",
    "FileResult",
    "HostPathSource",
    "LocalSource",
    "ManifestError",
    "ManifestStore",
    "NFSSource",
    "Origin",
    "PVCSource",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "PodVolume",
    "Secret",
    "Snapshot",
    "derived_pod_uid",
    "is_manifest_name",
    "load_bytes",
    "load_file",
    "parse_quantity",
]
