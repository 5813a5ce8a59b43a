"""The volume snapshots this daemon created: one fsync'd JSON file per snapshot under the root dir.

``<root>/state/snapshots/snapshot-<VolumeSnapshot uid>.json`` plays the VolumeSnapshotContent:
the driver's snapshot id, the volume it was cut from, its size, creation time, readiness, class
and deletion policy. It is written (temp file, fsync, rename, fsync the dir) right after every
CreateSnapshot answer and before anything uses the snapshot (a restore reads the id from here
only). Only a snapshot with a record is ever deleted (DeleteSnapshot): the record is the
"we created it" proof, as the provisioned PV record is for volumes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field

from volumemanager.controller.durable import load_records, remove_durably, write_durably

log = logging.getLogger(__name__)

RECORDS_DIR = "snapshots"
SUFFIX = ".json"


@dataclass(frozen=True)
class SnapshotRecord:
    """What the daemon knows of one snapshot it created (the VolumeSnapshotContent's part).

    ``name`` is ``snapshot-<uid>``: the CreateSnapshot name and the file's name."""

    name: str
    namespace: str
    snapshot: str  # the VolumeSnapshot's name
    uid: str
    source_claim: str  # namespace/name
    source_pv: str
    source_volume_id: str
    driver: str
    snapshot_class: str
    deletion_policy: str  # Delete | Retain
    snapshot_id: str
    ready_to_use: bool
    restore_size_bytes: int | None
    creation_time: float | None
    secret_name: str = ""  # the snapshotter secret, by reference (for DeleteSnapshot)
    secret_namespace: str = ""
    parameters: dict[str, str] = field(default_factory=dict)  # the class's, sent again to follow it

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SnapshotRecord:
        """``KeyError``/``TypeError``/``ValueError`` for a record that is not one of ours."""
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        rec = cls(**fields)
        if not rec.name or not rec.snapshot_id or not rec.driver:
            raise ValueError("name, snapshot_id and driver are required")
        return rec


def _parse_record(path: str) -> tuple[str, SnapshotRecord]:
    """One record file -> (its name, the record); raises as ``SnapshotRecord.from_json`` or
    ``OSError``."""
    with open(path, "rb") as f:
        rec = SnapshotRecord.from_json(json.load(f))
    return rec.name, rec


class SnapshotRecords:
    """Thread-safe store of the snapshot records; ``generation`` grows on every change."""

    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, RECORDS_DIR)
        self._lock = threading.Lock()
        self._records: dict[str, SnapshotRecord] = {}
        self._errors: dict[str, str] = {}
        self.generation = 0

    def path_of(self, name: str) -> str:
        return os.path.join(self.directory, name + SUFFIX)

    def load(self) -> None:
        """Read every record (at start). One that does not parse is kept on disk and reported,
        never deleted: it may be the only trace of a snapshot in the storage system."""
        found, errors = load_records(self.directory, SUFFIX, _parse_record,
                                     lambda name: f"it names snapshot {name}", "snapshot record", log)
        with self._lock:
            self._records, self._errors = found, errors
            self.generation += 1

    def all(self) -> dict[str, SnapshotRecord]:
        with self._lock:
            return dict(self._records)

    def get(self, name: str) -> SnapshotRecord | None:
        with self._lock:
            return self._records.get(name)

    def errors(self) -> dict[str, str]:
        with self._lock:
            return dict(self._errors)

    def write(self, record: SnapshotRecord) -> None:
        """Write one record durably (raises ``OSError``); in memory only once it is on disk."""
        write_durably(self.path_of(record.name),
                      json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n")
        with self._lock:
            self._records[record.name] = record
            self.generation += 1

    def remove(self, name: str) -> None:
        """Forget a deleted snapshot (after DeleteSnapshot succeeded), durably."""
        remove_durably(self.path_of(name))
        with self._lock:
            self._records.pop(name, None)
            self.generation += 1
