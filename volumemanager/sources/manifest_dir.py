"""Desired state from a directory of manifest files, watched with inotify (watchdog).

One worker thread owns all re-reading. The watchdog observer thread only records which paths
changed; the worker waits until the burst is over (``DEBOUNCE_SECONDS`` without a new event,
at most ``DEBOUNCE_MAX_SECONDS`` after the first) and then re-reads just those files, so an
editor's write+close or a tool's write-temp+rename becomes one change. A slow periodic rescan
is the safety net for everything inotify does not tell us.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Mapping

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from volumemanager.manifests.loader import is_manifest_name
from volumemanager.manifests.models import Snapshot
from volumemanager.manifests.store import ManifestStore
from volumemanager.sources.base import DesiredStateSource, SourceHealth

log = logging.getLogger(__name__)

# The safety net behind inotify: events can be lost (queue overflow), the directory can be
# replaced by a rename in its parent (the watch follows the old inode), it may not exist yet
# when we start, or live on a filesystem without inotify. A rescan only stats the files and
# re-reads those whose (inode, size, mtime, ctime) changed, so it is cheap; 30 s bounds how long
# such a missed change can go unnoticed without costing anything measurable.
RESCAN_INTERVAL = 30.0
# While the directory cannot be read (missing, not a directory, unreadable) nothing is torn
# down, so every second it stays unread delays the cleanup of pods removed meanwhile: retry
# often. A failed listing costs one syscall.
FAILED_RETRY_SECONDS = 1.0
# A directory moved away or replaced gives no event the watch reports reliably; one stat this
# often tells whether it is still the directory being watched, so status shows the failure
# (and the replacement is read) within a second, not a rescan interval.
DIR_CHECK_SECONDS = 1.0
# A burst of events for one change (create, modify, close) arrives within a millisecond or
# two; waiting this long after the last event turns it into one re-read. A rename into place
# needs no wait (_SETTLED_EVENTS), so an atomic writer's change is read at once.
DEBOUNCE_SECONDS = 0.005
# ...but a file that is written continuously is still read at least this often.
DEBOUNCE_MAX_SECONDS = 0.2
# How long stop() waits for the worker and observer threads.
STOP_TIMEOUT = 5.0

# Our own reads cause open/close-nowrite events; they are not asked for, so reading a file
# never wakes the worker again.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    FileAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
_EVENT_TYPES = frozenset({"created", "modified", "moved", "deleted", "closed", "attrib"})
# Events after which a manifest name's content is final: a rename (write-temp-then-rename, the
# way tools should write manifests) and a delete. Anything else may be a writer mid-way (a
# shell's truncate then write, an editor's several writes), read only after the debounce.
_SETTLED_EVENTS = frozenset({"moved", "deleted"})


class _Handler(FileSystemEventHandler):
    def __init__(self, source: ManifestDirSource) -> None:
        self._source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _EVENT_TYPES:
            return
        self._source._event(os.fsdecode(event.src_path), event)
        dest = getattr(event, "dest_path", "")
        if dest:
            self._source._event(os.fsdecode(dest), event)


class ManifestDirSource(DesiredStateSource):
    """Pods, PVs, PVCs and Secrets from the manifest files in one directory (not recursive)."""

    def __init__(self, directory: str, rescan_interval: float = RESCAN_INTERVAL) -> None:
        self.directory = os.path.abspath(directory)
        self.name = f"manifest-dir:{self.directory}"
        self.rescan_interval = rescan_interval
        self._store = ManifestStore(self.directory)
        self._cond = threading.Condition()
        self._pending: set[str] = set()  # changed: read once the writer is done (debounced)
        self._ready: set[str] = set()  # renamed or deleted: read at once
        self._pending_rescan = False
        self._first_event = 0.0
        self._last_event = 0.0
        self._stopping = False
        self._synced = False
        self._failed_since: float | None = None
        self._health_lock = threading.Lock()
        self._health = SourceHealth(self.name, False, None, None, time.time())
        self._on_change: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._watch_lock = threading.Lock()
        self._watch: Any = None
        self._watched_inode: tuple[int, int] | None = None
        self._logged_errors: frozenset[str] = frozenset()

    # -- DesiredStateSource ------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced

    def health(self) -> SourceHealth:
        return self._health

    def prefer_uid_holders(self, holders: Mapping[str, tuple[str, str]]) -> None:
        """Optional (the daemon calls it before ``start`` when the source has it): which pod
        each UID belonged to before a restart, so that pod keeps it against a newcomer."""
        self._store.prefer_uid_holders(holders)

    @property
    def store(self) -> ManifestStore:
        return self._store

    def snapshot(self) -> Snapshot:
        return self._store.snapshot()

    def start(self, on_change: Callable[[], None]) -> None:
        """Watch first, then read everything: a change during the first read is not lost."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._on_change = on_change
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self._ensure_watch()
        self._store.rescan(force=True)
        self._update_health()
        snap = self._store.snapshot()
        log.info(
            "manifest dir %s read: %d pods, %d PVs, %d PVCs, %d secrets, %d errors",
            self.directory, len(snap.pods), len(snap.pvs), len(snap.pvcs), len(snap.secrets),
            len(snap.errors),
        )
        self._log_errors(snap)
        self._thread = threading.Thread(target=self._run, name="manifest-dir", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT)
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(STOP_TIMEOUT)
            except Exception:  # an emitter that already died must not fail shutdown
                log.debug("stopping the watchdog observer failed", exc_info=True)

    def resync(self) -> None:
        """Re-read every file now, regardless of its stat, then call on_change."""
        self._store.rescan(force=True)
        self._update_health()
        self._ensure_watch()
        self._notify()

    # -- internals ---------------------------------------------------------------------------

    def _event(self, path: str, event: FileSystemEvent) -> None:
        """Called on the observer thread: record, never read."""
        with self._cond:
            if path == self.directory:
                if event.event_type == "modified":
                    return  # the per-file events say more
                self._pending_rescan = True  # the directory itself was deleted or moved
            elif os.path.dirname(path) != self.directory:
                return
            elif event.is_directory or not is_manifest_name(os.path.basename(path)):
                # Not a manifest itself, but may be what manifests point at (a "..data"
                # symlink swapped by a ConfigMap-style updater): compare every file's stat.
                # Only when some manifest is a symlink: else it is a temp file of an atomic
                # writer (whose rename names the manifest), and a stat of every file per
                # change made each change O(all files).
                if not self._store.has_symlinks():
                    return
                self._pending_rescan = True
            elif event.event_type in _SETTLED_EVENTS and path not in self._pending:
                # Renamed into place (an atomic writer's last step) or away, or deleted: the
                # name's content is final now, so it is read at once, with no debounce.
                self._ready.add(path)
            else:
                self._ready.discard(path)  # written to again: wait for the writer to finish
                self._pending.add(path)
            now = time.monotonic()
            if self._first_event == 0.0:
                self._first_event = now
            self._last_event = now
            self._cond.notify_all()

    def _run(self) -> None:
        next_rescan = time.monotonic() + self.rescan_interval
        last_rescan = last_check = time.monotonic()
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    due = next_rescan
                    if self._failed_since is not None or not self._synced:
                        due = min(due, last_rescan + FAILED_RETRY_SECONDS)
                    else:
                        due = min(due, last_check + DIR_CHECK_SECONDS)
                    debounced = False
                    if self._pending or self._pending_rescan:
                        settle = min(self._last_event + DEBOUNCE_SECONDS, self._first_event + DEBOUNCE_MAX_SECONDS)
                        debounced = now >= settle
                        due = min(due, settle)
                    if self._ready:
                        due = now
                    if now >= due:
                        break
                    self._cond.wait(due - now)
                paths, rescan = sorted(self._ready), False
                self._ready = set()
                if debounced:
                    paths = sorted(set(paths) | self._pending)
                    rescan = self._pending_rescan
                    self._pending = set()
                    self._pending_rescan = False
                    self._first_event = 0.0
                periodic = now >= next_rescan
                unread = self._failed_since is not None or not self._synced
                retry = unread and now >= last_rescan + FAILED_RETRY_SECONDS
                check = not retry and now >= last_check + DIR_CHECK_SECONDS
            if check:
                last_check = now
                rescan = rescan or self._dir_replaced()
            changed = False
            try:
                if paths and not os.path.isdir(self.directory):
                    # The directory itself went away (rm -r, an unmounted /etc): the deletes
                    # of its files are not removals of pods. The rescan records the failure
                    # and keeps every object.
                    paths, rescan = [], True
                for path in paths:
                    changed |= self._store.update_file(path, force=True)
                if rescan or periodic or retry:
                    changed |= self._store.rescan(force=False)
                    last_rescan = time.monotonic()
                    self._ensure_watch()
                changed |= self._update_health()
            except Exception:  # keep watching: the next event or rescan tries again
                log.exception("re-reading manifest dir %s failed", self.directory)
            if periodic:
                next_rescan = time.monotonic() + self.rescan_interval
            if changed:
                self._notify()

    def _dir_replaced(self) -> bool:
        """Whether the directory is gone or is not the one being watched (one stat)."""
        try:
            st = os.stat(self.directory)
        except OSError:
            return True
        with self._watch_lock:
            return self._watch is not None and (st.st_dev, st.st_ino) != self._watched_inode

    def _update_health(self) -> bool:
        """Follow the store's verdict on the directory; log each change of state once.
        Returns whether the health changed (the consumer must look again: the unmount gate)."""
        error = self._store.dir_error()
        now = time.time()
        with self._health_lock:
            old = self._health
            if error is None:
                if old.ok:
                    return False
                if old.failed_since is not None:
                    log.info("manifest dir %s can be read again (it failed at %s); it is the desired state again",
                             self.directory, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old.failed_since)))
                new = SourceHealth(self.name, True, None, None, now)
            else:
                if old.failed_since is not None and error == old.error:
                    return False
                if old.failed_since is None:
                    log.warning("manifest dir %s cannot be read: %s; nothing is torn down until it is read whole "
                                "(retrying every %.0f s)", self.directory, error, FAILED_RETRY_SECONDS)
                since = old.failed_since if old.failed_since is not None else now
                new = SourceHealth(self.name, old.synced, since, error, since)
            self._health = new
            self._synced, self._failed_since = new.synced, new.failed_since
            return True

    def _notify(self) -> None:
        callback = self._on_change
        if callback is None:
            return
        self._log_errors(self._store.snapshot())
        try:
            callback()
        except Exception:
            log.exception("on_change callback of %s failed", self.name)

    def _log_errors(self, snap: Snapshot) -> None:
        """Log each manifest error once when it appears, and once when it is gone. The
        messages are safe to log: they never contain Secret values or mount options."""
        current = frozenset(str(e) for e in snap.errors)
        with self._watch_lock:
            new, gone = current - self._logged_errors, self._logged_errors - current
            self._logged_errors = current
        for text in sorted(new):
            log.warning("manifest error: %s", text)
        for text in sorted(gone):
            log.info("manifest error resolved: %s", text)

    def _ensure_watch(self) -> None:
        """Watch the directory if it exists; re-watch it if it was replaced (new inode)."""
        with self._watch_lock:
            observer = self._observer
            if observer is None:
                return
            try:
                st = os.stat(self.directory)
                inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError:
                inode = None
            if inode is not None and inode == self._watched_inode and self._watch is not None:
                return
            if self._watch is not None:
                try:
                    observer.unschedule(self._watch)
                except Exception:  # its emitter stopped itself when the directory went away
                    log.debug("unscheduling the old watch failed", exc_info=True)
                self._watch = None
                self._watched_inode = None
            if inode is None:
                return
            try:
                self._watch = observer.schedule(
                    _Handler(self), self.directory, recursive=False, event_filter=_EVENT_FILTER
                )
                self._watched_inode = inode
                log.debug("watching %s", self.directory)
            except OSError as exc:
                log.warning("cannot watch manifest dir %s: %s; rescanning every %.0f s",
                            self.directory, exc, self.rescan_interval)
