"""The interface between a desired-state source and the daemon that consumes it."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from volumemanager.manifests.models import Snapshot

SYNCED = "synced"
FAILED = "failed"
STARTING = "starting"

#: The origin of an object read from an API server starts with this (``api:Pod ns/name``); a
#: manifest file's origin is its path. One rule, asked through ``origin_kind``.
API_ORIGIN_PREFIX = "api:"


def origin_kind(origin: object) -> str:
    """``api`` for an object read from the API server, ``manifests`` for one from a file."""
    return "api" if str(origin or "").startswith(API_ORIGIN_PREFIX) else "manifests"


@dataclass(frozen=True)
class SourceHealth:
    """Whether a source's snapshot can be trusted to say what should *not* exist.

    A source that could not be read (its directory is missing, say) knows nothing about which
    pods are gone: its snapshot is empty or stale. Tearing volumes down on that basis deletes
    the data of running pods, so the daemon unmounts nothing until the source is ``ok``.
    """

    name: str
    synced: bool  # it has been read whole at least once
    failed_since: float | None = None  # wall-clock time of the first failed read in a row
    error: str | None = None  # why the last read failed
    since: float | None = None  # when the current state began (the failure, the sync, the start)

    @property
    def state(self) -> str:
        if self.failed_since is not None:
            return FAILED
        return SYNCED if self.synced else STARTING

    @property
    def ok(self) -> bool:
        """Read whole, and the last read did not fail: its snapshot may remove pods."""
        return self.synced and self.failed_since is None

    def describe(self) -> str:
        """One line for ``status`` and ``explain``."""
        if self.state == FAILED:
            return (f"{self.name} failed since {_iso(self.failed_since)}: {self.error}; "
                    "its last objects are stale and kept; nothing is torn down until it is read whole")
        if self.state == STARTING:
            return f"{self.name} has not been read whole yet; nothing is torn down until it is"
        return f"{self.name} synced"

    def to_dict(self) -> dict[str, Any]:
        since = self.failed_since if self.failed_since is not None else self.since
        return {"name": self.name, "state": self.state, "since": since, "error": self.error}


def _iso(ts: float | None) -> str:
    if ts is None:
        return "?"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@runtime_checkable
class DesiredStateSource(Protocol):
    """Something that knows which pods and volumes should exist on this node.

    The consumer polls ``snapshot()`` (cheap, immutable) and is nudged by ``on_change`` so it
    does not have to poll often; ``Snapshot.generation`` tells it whether anything is new.
    """

    name: str  # e.g. "manifest-dir:/etc/volumemanager/manifests", for logs and status

    def start(self, on_change: Callable[[], None]) -> None:
        """Do the first full read, then begin watching; ``on_change`` is called (from any
        thread) after each change of the snapshot or of the health."""
        ...

    def stop(self) -> None:
        """Stop watching; idempotent. The last snapshot stays readable."""
        ...

    def snapshot(self) -> Snapshot:
        """The current objects and errors; cheap."""
        ...

    def resync(self) -> None:
        """Re-read everything now (SIGHUP), then call ``on_change``."""
        ...

    @property
    def synced(self) -> bool:
        """True once the source has been read whole (a failed first read is not synced)."""
        ...

    def health(self) -> SourceHealth:
        """Synced, failed (since when, why) or still starting; cheap."""
        ...
