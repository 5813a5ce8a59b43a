"""fsGroup ownership of a volume: the kubelet's SetVolumeOwnership, without its slow parts.

The rules are the kubelet's (``pkg/volume/volume_linux.go``), so a pod sees the same bits:

* every entry gets group ``fs_group`` (``lchown(-1, fs_group)``: a symlink's own group, never
  its target's);
* every entry that is not a symlink gets ``mode | 0660`` (``| 0440`` when read-only); a
  directory also gets the setgid bit and ``| 0110`` so that new files inherit the group;
* ``OnRootMismatch`` skips the walk when the root is a directory with gid ``fs_group``, the
  setgid bit and at least those permission bits;
* the root is changed last: a walk cut short leaves the root "wrong", so ``OnRootMismatch``
  walks again next time instead of trusting a half-done tree.

What is different, and why:

* Only what is wrong is changed: an entry already right costs the one ``fstatat`` of its
  directory entry. The kubelet chowns and chmods every file, which rewrites every inode (and
  its ctime) on every mount with ``Always``.
* The walk works on directory fds (``openat(O_NOFOLLOW|O_DIRECTORY)`` and ``*at`` calls), so
  a pod renaming or swapping a directory for a symlink while we walk cannot redirect us out of
  the volume; file modes are set with ``fchmodat2(AT_SYMLINK_NOFOLLOW)`` (Linux 6.6+) so a file
  swapped for a symlink to ``/etc/passwd`` between our stat and our chmod is not followed.
  The kubelet's ``os.Chmod(path)`` follows it.
* It stays on one filesystem and never enters a mount below the root (a different ``st_dev``,
  or a mount point listed in mountinfo, which also catches bind mounts within one filesystem).
* Failures are collected, not just logged: an unreadable directory is reported with its path,
  the rest of the tree is still done, and the result says how many failed (and the root is
  then left alone, see above).
* It can run several threads: the syscalls release the GIL. See ``bench/fsgroup.py`` for the
  measurements behind ``DEFAULT_WORKERS``.
* The walk below the root runs in C when ``mount_utils._ownership`` is built (``setup.py``,
  optional): the same rules without ~1 us of interpreter per file and without the GIL, so
  pthreads share the tree (``NATIVE_DEFAULT_WORKERS``). This module's Python walk stays the
  reference and the fallback (no compiler at install time, ``native=False``, or
  ``VOLUMEMANAGER_FSGROUP_WALK=python`` in the environment); the root is fixed here either way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from mount_utils.mountinfo import MountTable

try:  # the optional C walk (setup.py); without it every walk is the Python one below
    from mount_utils import _ownership as _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None

ALWAYS = "Always"
ON_ROOT_MISMATCH = "OnRootMismatch"
POLICIES = (ALWAYS, ON_ROOT_MISMATCH)

RW_MASK = 0o660
RO_MASK = 0o440
EXEC_MASK = 0o110

# Threads lose to one on 2 cores (tmpfs 0.66 s vs 0.67 s, ext4 1.02 s vs 1.32 s for 100,000
# files, bench/fsgroup.py): the Python between syscalls holds the GIL. More workers only pay
# where each syscall waits long (a network filesystem).
DEFAULT_WORKERS = 1
# The C walk holds no GIL, so its threads do share the work: one per core, a few at most
# (bench/fsgroup.py: 2 workers on 2 cores beat 1 by ~1.6x on a tree that needs every change).
NATIVE_DEFAULT_WORKERS = max(1, min(4, len(os.sched_getaffinity(0))))
# "python" forces the Python walk (tests and the bench compare the two); anything else: auto.
IMPL_ENV = "VOLUMEMANAGER_FSGROUP_WALK"
# Entries of one big directory are handed out in batches of this many, so that a flat
# directory of 100,000 files is still shared between workers.
BATCH = 2048
# At most this many failures are kept with their paths (the count is always exact).
MAX_ERRORS_KEPT = 20

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SYS_FCHMODAT2 = 452  # same number on every architecture (added after the unification)
_AT_SYMLINK_NOFOLLOW = 0x100


class OwnershipError(OSError):
    """Changing the ownership of one path failed (errno, strerror and filename as OSError)."""


class OwnershipIncompleteError(Exception):
    """Raised by ``OwnershipResult.raise_for_failures``: some entries could not be changed.

    ``errors`` are the first failures (``OwnershipError``, each with its path); ``failed`` is
    the exact count. The message names the first few, so status can show it as is.
    """

    def __init__(self, root: str, failed: int, errors: tuple[OwnershipError, ...], timed_out: bool) -> None:
        shown = "; ".join(f"{e.filename}: {e.strerror}" for e in errors[:3])
        why = "deadline exceeded" if timed_out else f"{failed} entries failed"
        super().__init__(f"setting fsGroup ownership of {root}: {why}" + (f" ({shown})" if shown else ""))
        self.root = root
        self.failed = failed
        self.errors = errors
        self.timed_out = timed_out


@dataclass(frozen=True)
class OwnershipResult:
    """What ``set_volume_ownership`` did.

    ``changed``: whether any inode was changed. ``files``/``dirs``: entries visited (symlinks
    and other non-directories count as files; the root counts as a dir). ``changed_entries``:
    how many got a chown or chmod. ``seconds``: wall time, to be shown by status.
    ``skipped_reason``: why no walk was done (``"OnRootMismatch: root already matches"``), or None.
    ``failed``/``errors``: entries that could not be read or changed (first few with paths).
    ``timed_out``: the deadline cut the walk short (the root is then left unchanged).
    """

    changed: bool
    files: int
    dirs: int
    seconds: float
    skipped_reason: str | None = None
    changed_entries: int = 0
    failed: int = 0
    errors: tuple[OwnershipError, ...] = ()
    timed_out: bool = False
    workers: int = 1
    native: bool = False

    @property
    def complete(self) -> bool:
        return self.failed == 0 and not self.timed_out

    def raise_for_failures(self) -> None:
        """Raise ``OwnershipIncompleteError`` unless every entry was done."""
        if not self.complete:
            raise OwnershipIncompleteError(self._root, self.failed, self.errors, self.timed_out)

    _root: str = field(default="", repr=False)


def _load_fchmodat2() -> Callable[[int, bytes, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no libc
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_int]

    def fchmodat2(dir_fd: int, name: bytes, mode: int) -> int:
        if syscall(_SYS_FCHMODAT2, dir_fd, name, mode, _AT_SYMLINK_NOFOLLOW) == 0:
            return 0
        return ctypes.get_errno()

    return fchmodat2


_fchmodat2 = _load_fchmodat2()
_fchmodat2_works: bool | None = None  # None: not tried yet


def _chmod_nofollow(dir_fd: int, name: str, mode: int) -> None:
    """chmod `name` in `dir_fd` without following a symlink that raced into its place."""
    global _fchmodat2_works
    if _fchmodat2 is not None and _fchmodat2_works is not False:
        err = _fchmodat2(dir_fd, os.fsencode(name), mode)
        if err == 0:
            _fchmodat2_works = True
            return
        if err not in (errno.ENOSYS, errno.EPERM) or _fchmodat2_works:
            raise OSError(err, os.strerror(err), name)
        if err == errno.ENOSYS:
            _fchmodat2_works = False
        else:
            # EPERM before fchmodat2 ever worked: a seccomp filter, or just an immutable file.
            # Only a fallback that succeeds tells them apart.
            _chmod_proc_fd(dir_fd, name, mode)
            _fchmodat2_works = False
            return
    _chmod_proc_fd(dir_fd, name, mode)


def _chmod_proc_fd(dir_fd: int, name: str, mode: int) -> None:
    """Kernel older than 6.6: what glibc's lchmod does, an O_PATH fd and its /proc link."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return  # swapped for a symlink since our stat: never chmod a symlink's target
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _wanted_mode(mode: int, is_dir: bool, read_only: bool) -> int:
    want = stat.S_IMODE(mode) | (RO_MASK if read_only else RW_MASK)
    if is_dir:
        want |= stat.S_ISGID | EXEC_MASK
    return want


def root_matches(st: os.stat_result, fs_group: int, read_only: bool) -> bool:
    """The kubelet's ``requiresPermissionChange`` inverted: may ``OnRootMismatch`` skip the walk?"""
    if st.st_gid != fs_group or not stat.S_ISDIR(st.st_mode):
        return False
    need = (RO_MASK if read_only else RW_MASK) | EXEC_MASK
    return (st.st_mode & need) == need and bool(st.st_mode & stat.S_ISGID)


class _DirRef:
    """An open directory fd shared by the work items that still need it; closed by the last."""

    __slots__ = ("fd", "path", "refs")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.refs = 1


class _Walk:
    """One walk: a shared LIFO of work items (depth first, so few fds are open at once)."""

    def __init__(self, root: str, root_dev: int, fs_group: int, read_only: bool, workers: int,
                 deadline: float | None, mount_points: Collection[str]) -> None:
        self.root = root
        self.root_dev = root_dev
        self.gid = fs_group
        self.read_only = read_only
        self.workers = workers
        self.deadline = deadline
        self.mount_points = mount_points
        self.cond = threading.Condition()
        # Items: (parent DirRef, [(name, is_dir)]) -- a batch of entries of one directory.
        self.stack: list[tuple[_DirRef, list[tuple[str, bool]]]] = []
        self.active = 0
        self.stopped = False
        self.timed_out = False
        self.files = 0
        self.dirs = 0
        self.changed = 0
        self.failed = 0
        self.errors: list[OwnershipError] = []

    # -- bookkeeping -------------------------------------------------------------------------

    def _fail(self, err: OSError, path: str) -> None:
        with self.cond:
            self.failed += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(OwnershipError(err.errno or 0, err.strerror or str(err), path))

    def _release(self, ref: _DirRef) -> None:
        with self.cond:
            ref.refs -= 1
            last = ref.refs == 0
        if last:
            os.close(ref.fd)

    # -- work --------------------------------------------------------------------------------

    def add_dir(self, ref: _DirRef) -> None:
        """List `ref` and queue its entries in batches (takes over the caller's reference)."""
        try:
            with os.scandir(ref.fd) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except OSError as e:
            self._fail(e, ref.path)
            self._release(ref)
            return
        with self.cond:
            if self.stopped:  # the deadline passed meanwhile: queue nothing more
                entries = []
            for i in range(0, len(entries), BATCH):
                ref.refs += 1
                self.stack.append((ref, entries[i:i + BATCH]))
            self.cond.notify_all()
        self._release(ref)

    def do_batch(self, ref: _DirRef, batch: list[tuple[str, bool]]) -> None:
        dir_fd, gid, read_only = ref.fd, self.gid, self.read_only
        files = dirs = changed = 0
        try:
            for name, is_dir in batch:
                if is_dir:
                    entered, did_dir = self._do_dir(ref, name)
                    dirs += entered
                    changed += did_dir
                    continue
                files += 1
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):  # d_type was DT_UNKNOWN or it changed
                        files -= 1
                        entered, did_dir = self._do_dir(ref, name)
                        dirs += entered
                        changed += did_dir
                        continue
                    did = False
                    if st.st_gid != gid:
                        os.chown(name, -1, gid, dir_fd=dir_fd, follow_symlinks=False)
                        did = True
                    if not stat.S_ISLNK(st.st_mode):
                        mode = st.st_mode
                        want = _wanted_mode(mode, False, read_only)
                        # chown drops setuid (and setgid with g+x) of a regular file: put them
                        # back, as the kubelet does by chmodding with the mode read before.
                        if want != stat.S_IMODE(mode) or (did and mode & (stat.S_ISUID | stat.S_ISGID)):
                            _chmod_nofollow(dir_fd, name, want)
                            did = True
                    changed += did
                except OSError as e:
                    if e.errno != errno.ENOENT:  # deleted by the pod while we walk: fine
                        self._fail(e, os.path.join(ref.path, name))
        finally:
            with self.cond:
                self.files += files
                self.dirs += dirs
                self.changed += changed
            self._release(ref)

    def _do_dir(self, parent: _DirRef, name: str) -> tuple[int, int]:
        """Open a subdirectory, fix it through its fd and queue its contents.

        Returns (1 if entered else 0, 1 if changed else 0): a mount below is not entered.
        """
        path = os.path.join(parent.path, name)
        try:
            fd = os.open(name, _O_DIR, dir_fd=parent.fd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return 0, 0
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a symlink/file: next walk
                return 0, 0
            self._fail(e, path)
            return 0, 0
        try:
            st = os.fstat(fd)
            if st.st_dev != self.root_dev or path in self.mount_points:
                os.close(fd)  # a mount below the volume: not ours
                return 0, 0
            did = 0
            if st.st_gid != self.gid:
                os.fchown(fd, -1, self.gid)
                did = 1
            want = _wanted_mode(st.st_mode, True, self.read_only)
            if want != stat.S_IMODE(st.st_mode):
                os.fchmod(fd, want)
                did = 1
        except OSError as e:
            os.close(fd)
            self._fail(e, path)
            return 0, 0
        self.add_dir(_DirRef(fd, path))
        return 1, did

    def worker(self) -> None:
        while True:
            with self.cond:
                while not self.stack and self.active and not self.stopped:
                    self.cond.wait()
                if self.stopped or not self.stack:
                    self.stopped = True
                    self.cond.notify_all()
                    return
                item = self.stack.pop()
                self.active += 1
            try:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    with self.cond:
                        self.timed_out = True
                    self._release(item[0])
                    self._drain()
                else:
                    self.do_batch(*item)
            finally:
                with self.cond:
                    self.active -= 1
                    self.cond.notify_all()

    def _drain(self) -> None:
        """Deadline passed: drop every queued item (closing fds) and stop every worker."""
        with self.cond:
            items, self.stack = self.stack, []
            self.stopped = True
            self.cond.notify_all()
        for ref, _ in items:
            self._release(ref)

    def run(self, root_fd: int) -> None:
        self.add_dir(_DirRef(root_fd, self.root))
        if self.workers <= 1:
            try:
                self.worker()
            finally:
                self._drain()
            return
        threads = [threading.Thread(target=self.worker, name=f"fsgroup-{i}", daemon=True)
                   for i in range(self.workers - 1)]
        for t in threads:
            t.start()
        try:
            self.worker()
        finally:
            for t in threads:
                t.join()
            self._drain()  # anything left (after a deadline) still holds fds


def native_available() -> bool:
    """Whether the C walk is built and not switched off by ``VOLUMEMANAGER_FSGROUP_WALK=python``."""
    return _native is not None and os.environ.get(IMPL_ENV, "").lower() != "python"


class _NativeWalk:
    """The C walk's counts in the shape of ``_Walk``'s, so the root is fixed by the same code."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.files = self.dirs = self.changed = self.failed = 0
        self.timed_out = False
        self.errors: list[OwnershipError] = []

    def run(self, root_fd: int, root_dev: int, fs_group: int, read_only: bool, workers: int,
            deadline: float | None, mount_points: Collection[str]) -> None:
        global _fchmodat2_works
        assert _native is not None
        state = -1 if _fchmodat2_works is None else int(_fchmodat2_works)
        files, dirs, changed, failed, timed_out, errors, state = _native.walk(
            root_fd, os.fsencode(self.root), root_dev, fs_group, read_only, workers, deadline,
            sorted(os.fsencode(m) for m in mount_points), MAX_ERRORS_KEPT, state)
        _fchmodat2_works = None if state < 0 else bool(state)
        self.files, self.dirs, self.changed, self.failed, self.timed_out = files, dirs, changed, failed, timed_out
        self.errors = [OwnershipError(err, os.strerror(err), os.fsdecode(path)) for err, path in errors]

    def _fail(self, err: OSError, path: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(OwnershipError(err.errno or 0, err.strerror or str(err), path))


def _mount_points_below(root: str, table: MountTable | None) -> frozenset[str]:
    try:
        table = table if table is not None else MountTable.read()
    except OSError:
        return frozenset()  # no /proc: st_dev still keeps other filesystems out
    # mountinfo holds resolved paths; the walk builds its paths from `root` as given.
    real = os.path.realpath(root)
    return frozenset(root + m.mount_point[len(real):] for m in table.under(real) if m.mount_point != real)


def set_volume_ownership(path: str | os.PathLike[str], fs_group: int, policy: str = ALWAYS,
                         read_only: bool = False, *, workers: int | None = None,
                         timeout: float | None = None,
                         mount_table: MountTable | None = None,
                         native: bool | None = None) -> OwnershipResult:
    """Give the volume at `path` the group `fs_group` and setgid bits, as the kubelet does.

    ``policy`` is the pod's ``fsGroupChangePolicy`` (``Always`` or ``OnRootMismatch``; None
    means Always). ``read_only`` selects the 0440 mask (the caller normally never walks a
    read-only volume at all). ``workers``: threads (default ``DEFAULT_WORKERS``). ``timeout``:
    seconds after which the walk stops (``timed_out`` in the result; the root is left as it
    was so the next attempt walks again). ``mount_table``: a parsed mountinfo, to spare a read.
    ``native``: None walks in C when it is built (``native_available``), False always in
    Python, True in C or raises ``RuntimeError`` when it is not built. ``workers`` defaults to
    ``NATIVE_DEFAULT_WORKERS`` for the C walk, ``DEFAULT_WORKERS`` for the Python one.

    A root that is not a directory gets the one-entry rules (a symlink root: its own group
    only, never its target's, as the kubelet's ``walkDeep`` lstat does).

    Raises ``ValueError`` for a bad policy or group, ``OwnershipError`` when the root itself
    cannot be read; failures below the root are in the result (``raise_for_failures``).
    """
    start = time.monotonic()
    root = os.path.abspath(os.fspath(path))
    policy = policy or ALWAYS
    if policy not in POLICIES:
        raise ValueError(f"fsGroupChangePolicy {policy!r}: must be one of {', '.join(POLICIES)}")
    if isinstance(fs_group, bool) or not isinstance(fs_group, int) or not 0 <= fs_group < 2**32 - 1:
        raise ValueError(f"fsGroup {fs_group!r}: must be an integer 0..4294967294")
    try:
        st = os.lstat(root)
    except OSError as e:
        raise OwnershipError(e.errno or 0, e.strerror or str(e), root) from e
    if policy == ON_ROOT_MISMATCH and root_matches(st, fs_group, read_only):
        return OwnershipResult(False, 0, 0, time.monotonic() - start,
                               skipped_reason="OnRootMismatch: root already matches", _root=root)
    if not stat.S_ISDIR(st.st_mode):
        return _single(root, st, fs_group, read_only, start)
    try:
        root_fd = os.open(root, _O_DIR)
        root_st = os.fstat(root_fd)
    except OSError as e:
        raise OwnershipError(e.errno or 0, e.strerror or str(e), root) from e
    use_native = native_available() if native is None else native
    if use_native and _native is None:
        os.close(root_fd)
        raise RuntimeError("native fsGroup walk requested but mount_utils._ownership is not built")
    deadline = None if timeout is None else start + timeout
    mount_points = _mount_points_below(root, mount_table)
    walk: _Walk | _NativeWalk
    if use_native:
        n = max(1, workers if workers is not None else NATIVE_DEFAULT_WORKERS)
        walk = _NativeWalk(root)
    else:
        n = max(1, workers if workers is not None else DEFAULT_WORKERS)
        walk = _Walk(root, root_st.st_dev, fs_group, read_only, n, deadline, mount_points)
    # The Python walk closes root_fd when done with it; fix the root through a second fd, last.
    fix_fd = os.dup(root_fd)
    try:
        if isinstance(walk, _NativeWalk):
            try:  # the C walk lists the root through its own fd and leaves root_fd open
                walk.run(root_fd, root_st.st_dev, fs_group, read_only, n, deadline, mount_points)
            finally:
                os.close(root_fd)
        else:
            walk.run(root_fd)
        changed_root = 0
        if walk.failed == 0 and not walk.timed_out:
            try:
                if root_st.st_gid != fs_group:
                    os.fchown(fix_fd, -1, fs_group)
                    changed_root = 1
                want = _wanted_mode(root_st.st_mode, True, read_only)
                if want != stat.S_IMODE(root_st.st_mode):
                    os.fchmod(fix_fd, want)
                    changed_root = 1
            except OSError as e:
                walk._fail(e, root)
    finally:
        os.close(fix_fd)
    changed = walk.changed + changed_root
    return OwnershipResult(changed > 0, walk.files, walk.dirs + 1, time.monotonic() - start,
                           changed_entries=changed, failed=walk.failed, errors=tuple(walk.errors),
                           timed_out=walk.timed_out, workers=n, native=use_native, _root=root)


def _single(root: str, st: os.stat_result, fs_group: int, read_only: bool, start: float) -> OwnershipResult:
    """The root is not a directory (a file volume, or a symlink): the kubelet's rules for one entry."""
    parent, name = os.path.split(root)
    fd = os.open(parent or "/", _O_DIR)
    did = False
    errors: tuple[OwnershipError, ...] = ()
    try:
        if st.st_gid != fs_group:
            os.chown(name, -1, fs_group, dir_fd=fd, follow_symlinks=False)
            did = True
        if not stat.S_ISLNK(st.st_mode):
            want = _wanted_mode(st.st_mode, False, read_only)
            if want != stat.S_IMODE(st.st_mode) or (did and st.st_mode & (stat.S_ISUID | stat.S_ISGID)):
                _chmod_nofollow(fd, name, want)
                did = True
    except OSError as e:
        errors = (OwnershipError(e.errno or 0, e.strerror or str(e), root),)
    finally:
        os.close(fd)
    return OwnershipResult(did, 1, 0, time.monotonic() - start, changed_entries=int(did),
                           failed=len(errors), errors=errors, _root=root)
