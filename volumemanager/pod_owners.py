"""Which pod (namespace/name) each pod UID on this node belongs to, kept across restarts.

The root dir names a pod's volumes by UID only (``pods/<uid>/...``, as the kubelet does). Two
pods can claim one UID in manifests; while the daemon runs, the pod holding it keeps it. After
a restart, without this record, the first pod read would simply adopt whatever lies under
``pods/<uid>`` -- another pod's emptyDir data and tmpfs. With it, the pod the UID belongs to
keeps it, and a different pod with that UID waits until those volumes are torn down.

A small JSON file (``pod-owners.json``, rewritten atomically) and the changes since it was
written (``pod-owners.log``, one JSON line appended per UID that gets a new owner): a new pod
costs one short append, not a rewrite of every UID on the node (at 2,000 pods that rewrite was
the biggest cost of a new pod after the mounts). The log is folded into the file once it holds
more lines than the file holds UIDs. It is a safety hint, not state the daemon needs: a
missing or unreadable file only loses the protection across one restart, a torn last line is
skipped, and a failed write (a full disk) is logged and otherwise ignored.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

FILE_NAME = "pod-owners.json"
LOG_NAME = "pod-owners.log"
# Entries of pods that are gone are dropped when the record is this much bigger than the
# pods that are (a long-running node with pod churn must not grow it without bound).
PRUNE_FACTOR = 2
PRUNE_MIN = 64


class PodOwners:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)
        self.log_path = os.path.join(state_dir, LOG_NAME)
        self._log_lines = 0  # lines in the log since the file was written
        self._file_entries = 0  # UIDs in the file when it was written
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
        if not isinstance(owners, dict):
            owners = {}
        in_file = len(owners)
        changes = 0
        try:
            with open(self.log_path, "rb") as f:
                for raw in f.read().split(b"\n"):
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue  # a torn last line (or an empty one)
                    if isinstance(rec, dict) and "uid" in rec:
                        owners[rec["uid"]] = rec.get("key")
                        changes += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("ignoring the pod owner log %s: %s", self.log_path, e)
        with self._lock:
            self._owners = {u: k for u, k in owners.items()
                            if isinstance(u, str) and isinstance(k, str) and k.count("/") == 1}
            self._log_lines = changes
            self._file_entries = in_file
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
            changes = []
            for uid, key in pairs:
                if self._owners.get(uid) != key:
                    self._owners[uid] = key
                    changes.append((uid, key))
            if not changes:
                return False
            pruned = False
            if len(self._owners) > self._prune_above:
                alive = [u for u in self._owners if live(u)]
                if len(self._owners) > PRUNE_FACTOR * max(len(alive), 1):
                    self._owners = {u: self._owners[u] for u in alive}
                    pruned = True
                self._prune_above = max(PRUNE_MIN, PRUNE_FACTOR * len(alive))
            # Under the lock: writes never overtake each other.
            # Folded once the log is longer than the file: each fold writes N entries after N
            # appended lines, so a new pod costs O(1) amortised.
            if pruned or self._log_lines + len(changes) > max(PRUNE_MIN, self._file_entries):
                self._write(self._owners)
            else:
                self._append(changes)
        return True

    def _append(self, changes: list[tuple[str, str]]) -> None:
        # A leading newline: a torn tail left by a crash mid-write never glues to these lines.
        text = "\n" + "".join(json.dumps({"uid": uid, "key": key}) + "\n" for uid, key in changes)
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text.encode())  # one write: whole lines, or a torn last one skipped on load
            finally:
                os.close(fd)
            self._log_lines += len(changes)
        except OSError:
            self._write(self._owners)  # the file then holds them all (or says why it cannot)

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
            try:
                os.unlink(self.log_path)  # folded into the file (replayed twice on a crash here: harmless)
            except FileNotFoundError:
                pass
            self._log_lines = 0
            self._file_entries = len(owners)
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
