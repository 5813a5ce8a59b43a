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

import bisect
import dataclasses
import os
import stat
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from volumemanager.manifests.loader import FileResult, is_manifest_name, load_file
from volumemanager.manifests.models import (
    KIND_CONFIGMAP,
    KIND_CSIDRIVER,
    KIND_POD,
    KIND_PV,
    KIND_PVC,
    KIND_SECRET,
    KIND_STORAGECLASS,
    KIND_VOLUMESNAPSHOT,
    KIND_VOLUMESNAPSHOTCLASS,
    ManifestError,
    ManifestObject,
    Pod,
    Snapshot,
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
        # The index (see _reindex): identity -> its holders [(path, position, object)] in order,
        # and the winner of each; pods by UID; the other kinds' tables; the conflicts found.
        self._holders: dict[tuple[str, str, str], list[tuple[str, int, Any]]] = {}
        self._winners: dict[tuple[str, str, str], tuple[str, int, Any]] = {}
        self._uid_idents: dict[str, set[tuple[str, str, str]]] = {}
        self._pods: dict[str, Pod] = {}
        self._dups: dict[tuple[str, str, str], list[tuple[str, int, ManifestError]]] = {}
        self._uid_errors: dict[str, list[tuple[str, int, ManifestError]]] = {}
        self._dirty_uids: set[str] = set()  # UIDs whose claimants changed since the last snapshot
        self._changed_pods: set[str] = set()  # UIDs whose pod was added, removed or replaced since then
        self._last_built: int | None = None  # the generation of the last snapshot built
        self._error_paths: set[str] = set()  # files whose own errors are not empty
        self._tables: dict[str, dict] = {name: {} for name in (
            "pvs", "pvcs", "secrets", "configmaps", "storageclasses", "csidrivers", "volumesnapshotclasses",
            "volumesnapshots")}
        self._published: dict[str, dict] = {}  # kind -> the copy of its table the last snapshot holds
        t = self._tables
        self._by_kind: dict[str, tuple[dict, Callable[[tuple[str, str, str]], Any]]] = {
            KIND_PV: (t["pvs"], _cluster_key),
            KIND_PVC: (t["pvcs"], _namespaced_key),
            KIND_SECRET: (t["secrets"], _namespaced_key),
            KIND_CONFIGMAP: (t["configmaps"], _namespaced_key),
            KIND_STORAGECLASS: (t["storageclasses"], _cluster_key),
            KIND_CSIDRIVER: (t["csidrivers"], _cluster_key),
            KIND_VOLUMESNAPSHOTCLASS: (t["volumesnapshotclasses"], _cluster_key),
            KIND_VOLUMESNAPSHOT: (t["volumesnapshots"], _namespaced_key),
        }
        self._kind_of_table = {name: kind for kind, (table, _) in self._by_kind.items()
                               for name, t2 in self._tables.items() if t2 is table}

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
            self._dirty_uids.update(uid for uid in holders if uid in self._uid_idents)
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
            self._error_paths.discard(path)
            self._reindex(path, old.objects, ())
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
            if errors:
                self._error_paths.add(path)
            else:
                self._error_paths.discard(path)
            if old is None or old.objects != new.objects:
                self._reindex(path, old_objects, objects)
            self._changed()
            return True

    def _changed(self) -> None:
        self._generation += 1
        self._snapshot = None

    # -- the index: the snapshot's parts, kept up to date per changed file -----------------
    #
    # A change re-decides only the identities (kind, namespace, name) and pod UIDs the changed
    # file held or holds, so a change costs what it touches, not what the directory holds
    # (issue 16: rebuilding from every file was O(all files) per change). The rules are the
    # module docstring's: per identity the first in (path, position) order wins; per UID the
    # pod that held it keeps it while its document exists, else the first in path order.

    def _reindex(self, path: str, old: tuple[ManifestObject, ...], new: tuple[ManifestObject, ...]) -> None:
        """Under ``_lock``: ``path`` held ``old`` and now holds ``new``."""
        touched: set[tuple[str, str, str]] = set()
        for obj in old:
            ident = object_identity(obj)
            touched.add(ident)
            entries = self._holders.get(ident)
            if entries:
                entries[:] = [e for e in entries if e[0] != path]
        for seq, obj in enumerate(new):
            ident = object_identity(obj)
            touched.add(ident)
            bisect.insort(self._holders.setdefault(ident, []), (path, seq, obj), key=_position)
        for ident in touched:
            self._decide_identity(ident, self._dirty_uids)

    def _decide_identity(self, ident: tuple[str, str, str], uids: set[str]) -> None:
        entries = self._holders.get(ident) or []
        if not entries:
            self._holders.pop(ident, None)
        winner = entries[0] if entries else None
        before = self._winners.get(ident)
        self._dups.pop(ident, None)
        if len(entries) > 1:
            assert winner is not None
            label = f"{ident[1]}/{ident[2]}" if ident[1] else ident[2]
            self._dups[ident] = [(path, seq, ManifestError(
                obj.origin.file, obj.origin.document, "metadata.name",
                f"duplicate {obj.kind} {label!r}: already defined in {winner[2].origin}; ignored",
                obj.kind, label)) for path, seq, obj in entries[1:]]
        if winner is None:
            self._winners.pop(ident, None)
        else:
            self._winners[ident] = winner
        if before is not None and winner is not None and before[2] is winner[2] and before[:2] == winner[:2]:
            return
        if ident[0] == KIND_POD:
            if before is not None:
                old_uid = before[2].uid
                idents = self._uid_idents.get(old_uid)
                if idents is not None:
                    idents.discard(ident)
                    if not idents:
                        del self._uid_idents[old_uid]
                uids.add(old_uid)
            if winner is not None:
                self._uid_idents.setdefault(winner[2].uid, set()).add(ident)
                uids.add(winner[2].uid)
            return
        target = self._by_kind.get(ident[0])
        if target is None:
            return
        self._published.pop(ident[0], None)  # the next snapshot gets a new copy of this table
        table, key = target
        if winner is None:
            table.pop(key(ident), None)
        else:
            table[key(ident)] = winner[2]

    def _decide_uid(self, uid: str) -> None:
        before = self._pods.get(uid)
        self._decide_uid_winner(uid)
        if self._pods.get(uid) is not before:
            self._changed_pods.add(uid)

    def _decide_uid_winner(self, uid: str) -> None:
        claimants = sorted((self._winners[i] for i in self._uid_idents.get(uid, ())), key=_position)
        self._uid_errors.pop(uid, None)
        if not claimants:
            self._pods.pop(uid, None)
            self._uid_holders.pop(uid, None)
            return
        winner = claimants[0][2]
        if len(claimants) > 1:
            held = self._uid_holders.get(uid) or self._uid_seeds.get(uid)
            for _, _, pod in claimants:
                if (pod.namespace, pod.name) == held:
                    winner = pod
                    break
            self._uid_errors[uid] = [(path, seq, ManifestError(
                pod.origin.file, pod.origin.document, "metadata.uid",
                f"duplicate pod UID {uid!r}: already used by pod {winner.key!r} "
                f"({winner.origin}); pod {pod.key!r} ignored",
                KIND_POD, pod.key)) for path, seq, pod in claimants if pod is not winner]
        self._pods[uid] = winner
        self._uid_holders[uid] = (winner.namespace, winner.name)
        self._uid_seeds.pop(uid, None)

    def _build_snapshot(self) -> Snapshot:
        """The snapshot of the index: copies of its tables (C-speed dict copies) and the errors
        in file order (each file's own, then the duplicates it holds; the UID conflicts last).

        UIDs are decided here, when a snapshot is taken, not at each file: "the pod that held
        the UID in the last snapshot" must not change in the middle of a rescan or a swap of
        two files, where one file alone would briefly hand the UID to the other pod."""
        for uid in sorted(self._dirty_uids):
            self._decide_uid(uid)
        self._dirty_uids.clear()
        changed = (self._last_built, frozenset(self._changed_pods)) if self._last_built is not None else None
        self._changed_pods = set()
        self._last_built = self._generation
        dups_by_path: dict[str, list[tuple[int, ManifestError]]] = {}
        for dups in self._dups.values():
            for path, seq, err in dups:
                dups_by_path.setdefault(path, []).append((seq, err))
        errors: list[ManifestError] = list(self._dir_errors)
        for path in sorted(self._error_paths | dups_by_path.keys()):
            state = self._files.get(path)
            if state is not None:
                errors.extend(state.errors)
            errors.extend(err for _, err in sorted(dups_by_path.get(path, ()), key=lambda d: d[0]))
        for _, _, err in sorted((e for errs in self._uid_errors.values() for e in errs), key=_position):
            errors.append(err)
        return Snapshot(
            dict(self._pods), self._table("pvs"), self._table("pvcs"), self._table("secrets"), tuple(errors),
            self._generation,
            configmaps=self._table("configmaps"),
            storageclasses=self._table("storageclasses"),
            csidrivers=self._table("csidrivers"),
            volumesnapshotclasses=self._table("volumesnapshotclasses"),
            volumesnapshots=self._table("volumesnapshots"),
            pods_changed=changed,
        )

    def _table(self, name: str) -> dict:
        """A copy of one table for a snapshot: the previous snapshot's own copy while the table
        has not changed since, so a consumer comparing two snapshots can tell by identity."""
        kind = self._kind_of_table[name]
        copy = self._published.get(kind)
        if copy is None:
            copy = self._published[kind] = dict(self._tables[name])
        return copy


def _position(entry: tuple) -> tuple[str, int]:
    return entry[0], entry[1]


def _cluster_key(ident: tuple[str, str, str]) -> str:
    return ident[2]


def _namespaced_key(ident: tuple[str, str, str]) -> tuple[str, str]:
    return ident[1], ident[2]


def _error_identity(error: ManifestError) -> tuple[str, str, str] | None:
    if error.kind is None or error.name is None:
        return None
    if "/" in error.name:
        namespace, _, name = error.name.partition("/")
        return (error.kind, namespace, name)
    return (error.kind, "", error.name)
