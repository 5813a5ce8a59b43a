"""Which pod (namespace/name) each pod UID on this node belongs to, kept across restarts.

The root dir names a pod's volumes by UID only (``pods/<uid>/...``, as the kubelet does). Two
pods can claim one UID in manifests; while the daemon runs, the pod holding it keeps it. After
a restart, without this record, the first pod read would simply adopt whatever lies under
``pods/<uid>`` -- another pod's emptyDir data and tmpfs. With it, the pod the UID belongs to
keeps it, and a different pod with that UID waits until those volumes are torn down.

A small JSON file, rewritten atomically when a UID gets a new owner. It is a safety hint, not
state the daemon needs: a missing or unreadable file only loses the protection across one
restart, and a failed write (a full disk) is logged and otherwise ignored.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

FILE_NAME = "pod-owners.json"
# Entries of pods that are gone are dropped when the record is this much bigger than the
# pods that are (a long-running node with pod churn must not grow it without bound).
PRUNE_FACTOR = 2
PRUNE_MIN = 64


class PodOwners:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}
        self._write_failed = False
        # Look for gone entries only once the record has grown past this (set after each
        # look): checking every entry on every new UID made each new pod O(all pods).
        self._prune_above = PRUNE_MIN

    def load(self) -> dict[str, str]:
        """Read the record (uid -> "namespace/name"); an unusable file counts as empty."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as e:
            log.warning("ignoring the pod owner record %s: %s", self.path, e)
            data = {}
        owners = data.get("owners", {}) if isinstance(data, dict) else {}
        with self._lock:
            self._owners = {u: k for u, k in owners.items()
                            if isinstance(u, str) and isinstance(k, str) and k.count("/") == 1}
            return dict(self._owners)

    def owners(self) -> dict[str, str]:
        with self._lock:
            return dict(self._owners)

    def get(self, uid: str) -> str | None:
        with self._lock:
            return self._owners.get(uid)

    def update(self, pairs: Iterable[tuple[str, str]], live: Callable[[str], bool]) -> bool:
        """Record each (uid, pod key); drop entries ``live`` says are gone when the record has
        grown well past the live ones. Writes only when something changed."""
        with self._lock:
            changed = False
            for uid, key in pairs:
                if self._owners.get(uid) != key:
                    self._owners[uid] = key
                    changed = True
            if not changed:
                return False
            if len(self._owners) > self._prune_above:
                alive = [u for u in self._owners if live(u)]
                if len(self._owners) > PRUNE_FACTOR * max(len(alive), 1):
                    self._owners = {u: self._owners[u] for u in alive}
                self._prune_above = max(PRUNE_MIN, PRUNE_FACTOR * len(alive))
            self._write(self._owners)  # under the lock: writes never overtake each other
        return True

    def prune(self, keep: Callable[[str], bool]) -> None:
        with self._lock:
            gone = [u for u in self._owners if not keep(u)]
            if not gone:
                return
            for u in gone:
                del self._owners[u]
            self._write(self._owners)

    def _write(self, owners: Mapping[str, str]) -> None:
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            # One string from the C encoder, one write (json.dump streams a write per entry:
            # 1.5 ms at 2,000 pods, on the source thread, for every new pod).
            text = json.dumps({"version": 1, "owners": owners}, sort_keys=True)
            with open(tmp, "w", encoding="utf-8") as f:
                # No fsync: it is a hint, and a write here must not slow down the source thread.
                f.write(text)
            os.replace(tmp, self.path)
            if self._write_failed:
                self._write_failed = False
                log.info("the pod owner record %s is written again", self.path)
        except OSError as e:
            if not self._write_failed:
                self._write_failed = True
                log.warning("cannot write the pod owner record %s: %s; a restart will not know which "
                            "pod each UID belongs to", self.path, e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
