"""One volume is never deleted while a node operation is using it, nor used while it is deleted.

The controller decides a DeleteVolume from what it sees of the node (pod views, stages, desired
pods), and the node's mount operation decides a NodeStage from the desired state it saw when it
started: two threads, each acting on a look taken earlier. A mount operation started just before
its pod went away can reach NodeStage in the very millisecond the controller sends DeleteVolume
(the crash test saw it). The executor's keys cannot exclude the two (a node key is the volume's
id on the node, a controller key its PV), so this guard does, by PV name: the mount operation
holds the volume "in use" for its whole run; the deletion is refused while any holds it, looks
at the node once more under the same lock, and while it runs every new use is refused.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from operation_executor.errors import TransientError


class VolumeBeingDeletedError(TransientError):
    """A node operation met a volume whose DeleteVolume is running: retried with backoff (the
    pod that wanted it is usually gone by then)."""


class VolumeStillInUseError(TransientError):
    """A DeleteVolume met a volume a node operation is using (or the node still has): retried
    with backoff, and decided again from the node's state then."""


class VolumeUseGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: Counter[str] = Counter()
        self._deleting: set[str] = set()

    @contextmanager
    def using(self, pv_name: str | None) -> Iterator[None]:
        """Hold ``pv_name`` in use for the block (a no-op for volumes without a PV)."""
        if not pv_name:
            yield
            return
        with self._lock:
            if pv_name in self._deleting:
                raise VolumeBeingDeletedError(f"persistentvolume {pv_name} is being deleted (DeleteVolume)",
                                              code="VOLUME_BEING_DELETED")
            self._users[pv_name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._users[pv_name] -= 1
                if self._users[pv_name] <= 0:
                    del self._users[pv_name]

    @contextmanager
    def deleting(self, pv_name: str, still_used: Callable[[], bool]) -> Iterator[None]:
        """Run the block (the DeleteVolume) only if no node operation holds ``pv_name`` and
        ``still_used()`` (a fresh look at the node, taken under the lock) says no; every
        ``using`` of it is refused until the block ends."""
        with self._lock:
            if self._users[pv_name] or still_used():
                raise VolumeStillInUseError(f"persistentvolume {pv_name} is still in use on this node: "
                                            f"not deleting it now", code="VOLUME_IN_USE")
            self._deleting.add(pv_name)
        try:
            yield
        finally:
            with self._lock:
                self._deleting.discard(pv_name)
