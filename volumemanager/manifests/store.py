"""The last good objects of every manifest file, and the snapshot built from them.

The rule this module exists for (docs/contract.md, "Manifests"): *a file that fails to parse keeps
the objects it last held*. Only removing an object from a file, or removing the file, removes
it from the desired state, so a half-written or mistyped file never tears down a volume.

* whole-file failure (syntax error, unreadable, too big, empty): the file keeps all its objects;
* a document fails validation: the file's valid documents replace its old objects, and the
  rejected document's object -- matched by (kind, namespace, name) when that can be read --
  keeps its last good version;
* the same (kind, namespace, name) in two files: the first in sorted path order wins, the
  other is reported;
* two pods with the same UID: the pod that held the UID in the last snapshot keeps it while
  its document exists, whatever the files are called or in which order they change (else the
  first in sorted path order); the newcomer is reported. Otherwise swapping two documents
  between files would hand one pod's directory -- its emptyDir data -- to the other.

Thread-safe: readers take a cached immutable :class:`Snapshot`; updates are serialised, and
files are read outside the lock that ``snapshot()`` needs, so a slow read never blocks readers.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from volumemanager.manifests.loader import FileResult, is_manifest_name, load_file
from volumemanager.manifests.models import (
    KIND_POD,
    ConfigMap,
    CSIDriver,
    ManifestError,
    ManifestObject,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    Secret,
    Snapshot,
    StorageClass,
    VolumeSnapshot,
    VolumeSnapshotClass,
    object_identity,
)

StatKey = tuple[int, int, int, int, int]  # (dev, inode, size, mtime_ns, ctime_ns)


@dataclass(frozen=True)
class _FileState:
    stat_key: StatKey | None
    objects: tuple[ManifestObject, ...]
    errors: tuple[ManifestError, ...]


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ManifestStore:
    """Per-file last-good objects of one manifest dir (or of loose files when ``directory`` is None)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = os.path.abspath(directory) if directory is not None else None
        self._lock = threading.RLock()  # guards the state below; re-entrant for signal handlers
        self._update_lock = threading.RLock()  # serialises reads+merges so none applies out of order
        self._files: dict[str, _FileState] = {}
        self._dir_errors: tuple[ManifestError, ...] = ()
        # uid -> (namespace, name) of the pod that holds it in the current snapshot: the
        # memory that makes the duplicate-UID rule sticky.
        self._uid_holders: dict[str, tuple[str, str]] = {}
        # The same from before a restart (``prefer_uid_holders``): used for a UID until it
        # is first held in a snapshot.
        self._uid_seeds: dict[str, tuple[str, str]] = {}
        self._generation = 0
        self._snapshot: Snapshot | None = None
        self._symlinks: set[str] = set()  # manifest paths that are symlinks (see has_symlinks)

    # -- reading ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def prefer_uid_holders(self, holders: Mapping[str, tuple[str, str]]) -> None:
        """Seed the sticky duplicate-UID rule (uid -> (namespace, name)) before the first read:
        after a restart, the pod a UID belonged to keeps it, not the first in path order."""
        with self._lock:
            self._uid_seeds.update(holders)
            self._snapshot = None

    def dir_error(self) -> str | None:
        """Why the directory could not be listed at the last rescan; None when it could."""
        with self._lock:
            return self._dir_errors[0].message if self._dir_errors else None

    def files(self) -> list[str]:
        """The paths currently tracked, sorted."""
        with self._lock:
            return sorted(self._files)

    def snapshot(self) -> Snapshot:
        """The current desired state; cheap (cached until the next change)."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = self._build_snapshot()
            return self._snapshot

    # -- updating --------------------------------------------------------------------------

    def update_file(self, path: str, force: bool = True) -> bool:
        """Re-read one file; returns whether the snapshot changed.

        ``force=False`` skips the read when the file's (dev, inode, size, mtime, ctime) is
        what it was at the last read. A name that is not a manifest name, a vanished file and
        a directory all mean "no such manifest file": whatever it held is removed. A symlink
        whose target is gone is a file that cannot be read: it keeps what it held.
        """
        path = os.path.abspath(path)
        with self._update_lock:
            if not is_manifest_name(os.path.basename(path)):
                return self.remove_file(path)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if os.path.islink(path):
                    return self._dangling(path)
                return self.remove_file(path)
            except OSError as exc:
                result = FileResult(
                    (),
                    (ManifestError(self._display(path), None, None, f"cannot stat: {exc.strerror}"),),
                    parse_failed=True,
                )
                return self._apply(path, None, result)
            if stat.S_ISDIR(st.st_mode):
                return self.remove_file(path)
            key = _stat_key(st)
            with self._lock:
                old = self._files.get(path)
            if not force and old is not None and old.stat_key == key:
                return False
            self._note_symlink(path)
            result = load_file(path, self._display(path), root=self._root(path))
            if result.missing:
                if os.path.islink(path):
                    return self._dangling(path)
                return self.remove_file(path)
            return self._apply(path, key, result)

    def _dangling(self, path: str) -> bool:
        """A manifest that is a symlink whose target is gone (the ``..data`` layout of a
        ConfigMap mount, or a config mount that failed): its target could not be read, which
        is not the operator removing the file, so it keeps what it last held, like a file
        that fails to parse. Removing the symlink itself removes its objects."""
        try:
            target = os.readlink(path)
        except OSError:
            return self.remove_file(path)  # the symlink itself went meanwhile
        with self._lock:
            self._symlinks.add(path)
        result = FileResult(
            (),
            (ManifestError(self._display(path), None, None, f"symlink target {target!r} does not exist"),),
            parse_failed=True,
        )
        return self._apply(path, None, result)

    def has_symlinks(self) -> bool:
        """Whether a manifest read is a symlink: only then can a change to a name that is not
        a manifest (the ``..data`` link of a ConfigMap-style layout) change what a manifest
        holds. Without one, an editor's or a tool's temp file needs no rescan."""
        with self._lock:
            return bool(self._symlinks)

    def _note_symlink(self, path: str) -> None:
        link = os.path.islink(path)
        with self._lock:
            if link:
                self._symlinks.add(path)
            else:
                self._symlinks.discard(path)

    def remove_file(self, path: str) -> bool:
        """Forget a file and its objects; returns whether the snapshot changed."""
        path = os.path.abspath(path)
        with self._update_lock, self._lock:
            self._symlinks.discard(path)
            old = self._files.pop(path, None)
            if old is None:
                return False
            self._changed()
            return True

    def rescan(self, directory: str | None = None, force: bool = False) -> bool:
        """Bring the whole directory up to date; returns whether the snapshot changed.

        Re-reads only files whose stat changed (all of them with ``force``) and forgets files
        that are gone. A missing or unreadable directory is reported as an error and changes
        nothing else: an unmounted or briefly replaced /etc must not tear down every volume.
        """
        directory = os.path.abspath(directory or self.directory or ".")
        with self._update_lock:
            changed = False
            try:
                with os.scandir(directory) as it:
                    entries = sorted((e.name for e in it), key=str)
            except FileNotFoundError:
                return self._set_dir_errors(directory, "manifest directory does not exist")
            except NotADirectoryError:
                return self._set_dir_errors(directory, "manifest directory is not a directory")
            except OSError as exc:
                return self._set_dir_errors(directory, f"cannot list manifest directory: {exc.strerror}")
            changed |= self._set_dir_errors(directory, None)
            present = set()
            for name in entries:
                if not is_manifest_name(name):
                    continue
                path = os.path.join(directory, name)
                present.add(path)
                changed |= self.update_file(path, force=force)
            with self._lock:
                gone = [p for p in self._files if os.path.dirname(p) == directory and p not in present]
            for path in gone:
                changed |= self.remove_file(path)
            return changed

    # -- internals -------------------------------------------------------------------------

    def _root(self, path: str) -> str:
        return self.directory if self.directory is not None else os.path.dirname(path)

    def _display(self, path: str) -> str:
        """How errors and origins name a file: relative to the manifest dir when inside it."""
        if self.directory is not None:
            rel = os.path.relpath(path, self.directory)
            if not rel.startswith(".."):
                return rel
        return path

    def _set_dir_errors(self, directory: str, message: str | None) -> bool:
        errors = () if message is None else (ManifestError(directory, None, None, message),)
        with self._lock:
            if errors == self._dir_errors:
                return False
            self._dir_errors = errors
            self._changed()
            return True

    def _apply(self, path: str, key: StatKey | None, result: FileResult) -> bool:
        with self._lock:
            old = self._files.get(path)
            old_objects = old.objects if old is not None else ()
            errors = result.errors
            if result.parse_failed:
                objects = old_objects
                if old_objects:
                    errors = tuple(
                        dataclasses.replace(
                            e, message=f"{e.message}; keeping the {len(old_objects)} object(s) it last held"
                        )
                        for e in errors
                    )
            else:
                kept: list[Any] = []
                new_ids = {object_identity(o) for o in result.objects}
                for obj in old_objects:
                    ident = object_identity(obj)
                    if ident in result.failed_identities and ident not in new_ids:
                        kept.append(obj)
                objects = result.objects + tuple(kept)
                if kept:
                    kept_ids = {object_identity(o) for o in kept}
                    errors = tuple(
                        dataclasses.replace(e, message=f"{e.message}; keeping its last good version")
                        if _error_identity(e) in kept_ids
                        else e
                        for e in errors
                    )
            new = _FileState(key, objects, errors)
            self._files[path] = new
            if old is not None and old.objects == new.objects and old.errors == new.errors:
                return False
            self._changed()
            return True

    def _changed(self) -> None:
        self._generation += 1
        self._snapshot = None

    def _build_snapshot(self) -> Snapshot:
        pods: dict[str, Pod] = {}
        pvs: dict[str, PersistentVolume] = {}
        pvcs: dict[tuple[str, str], PersistentVolumeClaim] = {}
        secrets: dict[tuple[str, str], Secret] = {}
        configmaps: dict[tuple[str, str], ConfigMap] = {}
        storageclasses: dict[str, StorageClass] = {}
        csidrivers: dict[str, CSIDriver] = {}
        snapshot_classes: dict[str, VolumeSnapshotClass] = {}
        volume_snapshots: dict[tuple[str, str], VolumeSnapshot] = {}
        owners: dict[tuple[str, str, str], Any] = {}
        errors: list[ManifestError] = list(self._dir_errors)
        candidates: dict[str, list[Pod]] = {}  # uid -> pods claiming it, in path order
        for path in sorted(self._files):
            state = self._files[path]
            errors.extend(state.errors)
            for obj in state.objects:
                ident = object_identity(obj)
                label = f"{ident[1]}/{ident[2]}" if ident[1] else ident[2]
                first = owners.get(ident)
                if first is not None:
                    errors.append(ManifestError(
                        obj.origin.file, obj.origin.document, "metadata.name",
                        f"duplicate {obj.kind} {label!r}: already defined in {first.origin}; ignored",
                        obj.kind, label,
                    ))
                    continue
                if isinstance(obj, Pod):
                    candidates.setdefault(obj.uid, []).append(obj)
                elif isinstance(obj, PersistentVolume):
                    pvs[obj.name] = obj
                elif isinstance(obj, PersistentVolumeClaim):
                    pvcs[(obj.namespace, obj.name)] = obj
                elif isinstance(obj, Secret):
                    secrets[(obj.namespace, obj.name)] = obj
                elif isinstance(obj, ConfigMap):
                    configmaps[(obj.namespace, obj.name)] = obj
                elif isinstance(obj, StorageClass):
                    storageclasses[obj.name] = obj
                elif isinstance(obj, CSIDriver):
                    csidrivers[obj.name] = obj
                elif isinstance(obj, VolumeSnapshotClass):
                    snapshot_classes[obj.name] = obj
                elif isinstance(obj, VolumeSnapshot):
                    volume_snapshots[(obj.namespace, obj.name)] = obj
                owners[ident] = obj
        holders: dict[str, tuple[str, str]] = {}
        for uid, claimants in candidates.items():
            winner = claimants[0]
            if len(claimants) > 1:
                held = self._uid_holders.get(uid) or self._uid_seeds.get(uid)
                for pod in claimants:
                    if (pod.namespace, pod.name) == held:
                        winner = pod
                        break
                for pod in claimants:
                    if pod is winner:
                        continue
                    errors.append(ManifestError(
                        pod.origin.file, pod.origin.document, "metadata.uid",
                        f"duplicate pod UID {uid!r}: already used by pod {winner.key!r} "
                        f"({winner.origin}); pod {pod.key!r} ignored",
                        KIND_POD, pod.key,
                    ))
            pods[uid] = winner
            holders[uid] = (winner.namespace, winner.name)
            self._uid_seeds.pop(uid, None)
        self._uid_holders = holders
        return Snapshot(
            pods, pvs, pvcs, secrets, tuple(errors), self._generation,
            configmaps=configmaps,
            storageclasses=storageclasses,
            csidrivers=csidrivers,
            volumesnapshotclasses=snapshot_classes,
            volumesnapshots=volume_snapshots,
        )


def _error_identity(error: ManifestError) -> tuple[str, str, str] | None:
    if error.kind is None or error.name is None:
        return None
    if "/" in error.name:
        namespace, _, name = error.name.partition("/")
        return (error.kind, namespace, name)
    return (error.kind, "", error.name)
