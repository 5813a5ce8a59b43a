"""The PersistentVolumes this daemon provisioned: one fsync'd file per volume under the root dir.

``<root>/state/provisioned/pvc-<claim uid>.json`` is a real PersistentVolume document (the same
parser as the manifest dir reads it), written before anything may use the volume: write a temp
file, fsync it, rename it over the name, fsync the directory. A crash leaves either the old
file or the new one, never half of one; a stray temp file is removed at load.

The file *is* the provisioned-by record: only a volume with a file here is ever deleted by the
daemon (DeleteVolume), never a PV from the manifest dir.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Mapping

from volumemanager.controller.durable import load_records, remove_durably, write_durably
from volumemanager.manifests.loader import load_bytes, load_file
from volumemanager.manifests.models import PersistentVolume

log = logging.getLogger(__name__)

RECORDS_DIR = "provisioned"
SUFFIX = ".json"
# The sidecar's annotation (lib provisionClaimOperation) and the issue's name for the same fact.
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_PROVISIONED_BY_ISSUE = "volumes.kubernetes.io/provisioned-by"
# Which claim (by uid) the volume was made for: a claim deleted and re-created under the same
# name is a different claim and must not inherit the volume.
ANN_CLAIM_UID = "volumemanager.io/claim-uid"
# external-provisioner keeps the provisioner secret ref for DeleteVolume in these.
# Expansion: the claim's request the volume was last provisioned or expanded for (the shrink
# rule compares with it), and the size NodeExpandVolume must bring the filesystem to when the
# driver answered node_expansion_required (the node reconciler expands a staged volume whose
# recorded size is below it: online while staged, otherwise right after the next stage).
ANN_REQUESTED_BYTES = "volumemanager.io/requested-bytes"
ANN_NODE_EXPAND_BYTES = "volumemanager.io/node-expand-bytes"
ANN_DELETION_SECRET_NAME = "volume.kubernetes.io/provisioner-deletion-secret-name"
ANN_DELETION_SECRET_NAMESPACE = "volume.kubernetes.io/provisioner-deletion-secret-namespace"

_NOT_ONE_PV = "not exactly one PersistentVolume"


def _parse_record(path: str) -> tuple[str, PersistentVolume]:
    """One record file -> (its PV's name, the PV); ``ValueError`` with the parser's errors, or
    with ``_NOT_ONE_PV`` for a file that holds no PV or more than one."""
    result = load_file(path, display_name=path)
    found = [o for o in result.objects if isinstance(o, PersistentVolume)]
    if result.errors or len(found) != 1:
        raise ValueError("; ".join(str(e) for e in result.errors) or _NOT_ONE_PV)
    return found[0].name, found[0]


class ProvisionedVolumes:
    """Thread-safe store of the provisioned PV records; ``generation`` grows on every change."""

    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, RECORDS_DIR)
        self._lock = threading.Lock()
        self._pvs: dict[str, PersistentVolume] = {}
        self._errors: dict[str, str] = {}
        self.generation = 0

    def path_of(self, name: str) -> str:
        return os.path.join(self.directory, name + SUFFIX)

    def load(self) -> None:
        """Read every record (at start). A record that does not parse is kept on disk and
        reported, never deleted: it may be the only trace of a volume in the storage system."""
        pvs, errors = load_records(self.directory, SUFFIX, _parse_record,
                                   lambda name: _NOT_ONE_PV, "provisioned volume record", log)
        with self._lock:
            self._pvs, self._errors = pvs, errors
            self.generation += 1

    def all(self) -> dict[str, PersistentVolume]:
        with self._lock:
            return dict(self._pvs)

    def count(self) -> int:
        """How many records (O(1))."""
        with self._lock:
            return len(self._pvs)

    def get(self, name: str) -> PersistentVolume | None:
        with self._lock:
            return self._pvs.get(name)

    def errors(self) -> dict[str, str]:
        with self._lock:
            return dict(self._errors)

    def write(self, document: Mapping[str, Any]) -> PersistentVolume:
        """Write one PV document durably and return it as parsed; raises ``OSError`` or
        ``ValueError`` (a document our own parser refuses: a bug, never half-written)."""
        name = document["metadata"]["name"]
        path = self.path_of(name)
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        result = load_bytes(data, path, json_format=True)
        found = [o for o in result.objects if isinstance(o, PersistentVolume)]
        if result.errors or len(found) != 1:
            raise ValueError(f"{path}: the PersistentVolume to write does not parse: "
                             + "; ".join(str(e) for e in result.errors))
        write_durably(path, data)
        with self._lock:
            self._pvs[name] = found[0]
            self.generation += 1
        return found[0]

    def document(self, name: str) -> dict[str, Any]:
        """The record's document as written (to change a field and ``write`` it back);
        ``OSError``/``ValueError`` when it cannot be read."""
        with open(self.path_of(name), "rb") as f:
            return json.loads(f.read())

    def remove(self, name: str) -> None:
        """Forget a deleted volume (after DeleteVolume succeeded), durably."""
        remove_durably(self.path_of(name))
        with self._lock:
            self._pvs.pop(name, None)
            self.generation += 1
