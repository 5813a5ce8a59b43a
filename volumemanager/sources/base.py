"""The interface between a desired-state source and the daemon that consumes it."""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from volumemanager.manifests.models import Snapshot


@runtime_checkable
class DesiredStateSource(Protocol):
    """Something that knows which pods and volumes should exist on this node.

    The consumer polls ``snapshot()`` (cheap, immutable) and is nudged by ``on_change`` so it
    does not have to poll often; ``Snapshot.generation`` tells it whether anything is new.
    """

    name: str  # e.g. "manifest-dir:/etc/volumemanager/manifests", for logs and status

    def start(self, on_change: Callable[[], None]) -> None:
        """Do the first full read, then begin watching; ``on_change`` is called (from any
        thread) after each change of the snapshot."""
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
        """True once the first full read is done."""
        ...
