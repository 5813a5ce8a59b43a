"""Publish a set of files into a directory so that a reader never sees half an update.

This is the file-writing core of configMap, secret, downwardAPI and projected volumes (the
kubelet's AtomicWriter idea, our own code). It knows paths, bytes and modes, nothing of pods.

Layout of a target directory::

    ..data -> ..2026_11_28_10_40_00.123456789     the published version (one symlink)
    ..2026_11_28_10_40_00.123456789/              the files of that version (dirs 0755)
    name -> ..data/name                           a user-visible top-level key
    dir  -> ..data/dir                            the top of nested keys dir/a, dir/b/c

Why a symlink swap: ``rename(2)`` of ``..data_tmp`` over ``..data`` replaces one name
atomically, so whoever resolves ``..data`` (directly, or through a user-visible link) gets
either the complete old version or the complete new one. Names starting with ``..`` are
reserved for the writer; payload paths may not use them.

Order of a write, and why (every step leaves a valid ``..data``, so a crash anywhere is safe):

1. validate the payload (nothing touched on bad input);
2. remove leftovers of an interrupted write (``..<timestamp>`` dirs other than the current one,
   ``..data_tmp``, ``..link_tmp``);
3. compare with the current version: equal means no writes at all (only a read);
4. write a fresh ``..<timestamp>`` dir (files written, ``fchmod``-ed so umask does not matter,
   ``fchown``-ed to ``fs_user``; fsync'd unless the filesystem is tmpfs/ramfs, where there is
   no disk to reach and nothing survives a reboot anyway);
5. create the user-visible links of NEW top-level names. They dangle until the swap, which is
   deliberate: at every instant the set of *resolvable* visible names is exactly the key set
   of the version ``..data`` points to (a dangling link means "not there"). Creating them
   after the swap instead would show a moment where a new key is silently missing;
6. swap: symlink ``..data_tmp`` -> new dir, ``rename`` over ``..data``, fsync the target;
7. remove the links of removed top-level names (they dangle since the swap), then the old
   version dir.

A consistent reader resolves ``..data`` once (or reads ``..data`` before and after reading,
and retries if it changed): reading file by file through the visible names re-resolves
``..data`` per open, which no writer can make atomic across a swap.

Hostile contents: a pod may write into its volume if it is not read-only. Every operation is
relative to a directory fd with ``O_NOFOLLOW``; the writer never follows a symlink it finds,
and removes only its reserved ``..`` names and symlinks of the exact form ``name ->
..data/name``. A directory planted where a key's link must go is refused, not removed.

File contents may be secrets: nothing here logs or formats data, only paths and sizes.
Not thread-safe per target: the caller serializes writes to one target directory.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass

from mount_utils.paths import PathSafetyError, open_dir_below, relative_components

log = logging.getLogger(__name__)

DATA_DIR = "..data"
DATA_TMP = "..data_tmp"
LINK_TMP = "..link_tmp"
# The kubelet's names are ..2006_01_02_15_04_05.<digits>; ours put nanoseconds in the digits.
_TS_DIR_RE = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$")

DEFAULT_MAX_TOTAL_BYTES = 1024 * 1024  # like the size limit of one Kubernetes object
MAX_PATH_LENGTH = 4096
MAX_NAME_LENGTH = 255

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_TMPFS_MAGIC = 0x01021994
_RAMFS_MAGIC = 0x858458F6
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class FileProjection:
    """One file of a payload: its bytes, permission bits (0..0o777) and optional owner uid."""

    data: bytes
    mode: int = 0o644
    fs_user: int | None = None

    def __repr__(self) -> str:  # never show the bytes: they may be a secret
        return f"FileProjection(<{len(self.data)} bytes>, mode={self.mode:#o}, fs_user={self.fs_user})"


class AtomicWriteError(ValueError):
    """The payload is invalid (a bad path, mode, owner, or too big). Raised before anything
    is written. ``path`` is the offending payload path (None for the payload as a whole)."""

    def __init__(self, path: str | None, reason: str) -> None:
        super().__init__(f"{reason}: {path!r}" if path is not None else reason)
        self.path = path
        self.reason = reason


def _fs_is_memory(fd: int) -> bool:
    """Whether the directory `fd` is on tmpfs/ramfs (no fsync needed: no disk behind it)."""
    buf = ctypes.create_string_buffer(256)  # >= sizeof(struct statfs); f_type is the first long
    if _libc.fstatfs(fd, buf) != 0:
        return False
    f_type = ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF
    return f_type in (_TMPFS_MAGIC, _RAMFS_MAGIC)


def validate_payload(payload: Mapping[str, FileProjection],
                     max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> list[tuple[tuple[str, ...], FileProjection]]:
    """The payload's files as (components, projection), sorted; AtomicWriteError if any path,
    mode or owner is invalid, a file collides with a directory, or the total is too big."""
    if not isinstance(payload, Mapping):
        raise AtomicWriteError(None, "payload must be a mapping of path to FileProjection, "
                                     f"not {type(payload).__name__}")
    files: dict[tuple[str, ...], FileProjection] = {}
    for path, proj in payload.items():
        files[_validate_path(path)] = _validate_projection(path, proj)
    dirs = {parts[:i] for parts in files for i in range(1, len(parts))}
    for parts in sorted(files):
        if parts in dirs:
            raise AtomicWriteError("/".join(parts), "path is both a file and the directory of another path")
    total = 0
    for parts in sorted(files):
        total += len(files[parts].data)
        if total > max_total_bytes:
            raise AtomicWriteError("/".join(parts),
                                   f"payload exceeds the size limit of {max_total_bytes} bytes at this file")
    return sorted(files.items())


def _validate_path(path: object) -> tuple[str, ...]:
    if not isinstance(path, str):
        raise AtomicWriteError(repr(path), "path must be a string")
    if not path:
        raise AtomicWriteError(path, "path is empty")
    if "\0" in path:
        raise AtomicWriteError(path.replace("\0", "\\0"), "path contains NUL")
    if path.startswith("/"):
        raise AtomicWriteError(path, "path must be relative")
    if len(os.fsencode(path)) > MAX_PATH_LENGTH:
        raise AtomicWriteError(path[:64] + "...", f"path is longer than {MAX_PATH_LENGTH} bytes")
    parts = tuple(path.split("/"))
    for part in parts:
        if part == "":
            raise AtomicWriteError(path, "path has an empty component")
        if part in (".", ".."):
            raise AtomicWriteError(path, f"path has a {part!r} component")
        if len(os.fsencode(part)) > MAX_NAME_LENGTH:
            raise AtomicWriteError(path, f"a path component is longer than {MAX_NAME_LENGTH} bytes")
    if parts[0].startswith(".."):
        raise AtomicWriteError(path, "path may not start with '..' (reserved for the writer)")
    return parts


def _validate_projection(path: str, proj: object) -> FileProjection:
    if not isinstance(proj, FileProjection):
        raise AtomicWriteError(path, "value must be a FileProjection")
    if not isinstance(proj.data, (bytes, bytearray)):
        raise AtomicWriteError(path, "data must be bytes")
    if isinstance(proj.mode, bool) or not isinstance(proj.mode, int) or not 0 <= proj.mode <= 0o777:
        raise AtomicWriteError(path, "mode must be an integer between 0 and 0o777")
    if proj.fs_user is not None and (isinstance(proj.fs_user, bool) or not isinstance(proj.fs_user, int)
                                     or proj.fs_user < 0):
        raise AtomicWriteError(path, "fs_user must be a non-negative integer uid or None")
    return proj


class AtomicWriter:
    """Publishes payloads into `target_dir` (which must exist, and must not be a symlink).

    With `root`, `target_dir` must lie below `root` and is opened without following a symlink
    anywhere below `root` (use it when the parents are writable by others). `durable` forces
    (True) or skips (False) fsync; None decides per write: no fsync on tmpfs/ramfs.
    """

    def __init__(self, target_dir: str, *, root: str | None = None,
                 max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, durable: bool | None = None) -> None:
        self.target_dir = target_dir
        self.root = root
        self.max_total_bytes = max_total_bytes
        self.durable = durable

    # ----------------------------------------------------------------------------- public

    def write(self, payload: Mapping[str, FileProjection]) -> bool:
        """Make the target show exactly `payload`. Returns whether anything in the target
        changed (a new version published, or visible links repaired after a crash).

        Raises AtomicWriteError for an invalid payload (nothing touched), PathSafetyError for
        a planted entry the writer will not replace, OSError for I/O errors (the previous
        version stays published if the swap did not happen)."""
        files = validate_payload(payload, self.max_total_bytes)
        top_names = sorted({parts[0] for parts, _ in files})
        fd = self._open_target()
        try:
            current = self._current_version(fd)
            self._remove_leftovers(fd, keep=current)
            self._refuse_planted_dirs(fd, top_names)
            if current is not None and self._tree_equals(fd, current, files):
                links_changed = self._add_links(fd, top_names)
                links_changed |= self._remove_stale_links(fd, top_names)
                if links_changed:
                    self._sync(fd)
                return links_changed
            durable = self.durable if self.durable is not None else not _fs_is_memory(fd)
            new = self._make_version_dir(fd)
            try:
                self._populate(fd, new, files, durable)
                self._add_links(fd, top_names)
                self._swap(fd, new, durable)
            except BaseException:
                self._discard(fd, new)
                raise
            self._remove_stale_links(fd, top_names)
            if current is not None:
                self._remove_entry(fd, current)
            log.debug("published %d files (%d bytes) in %s as %s", len(files),
                      sum(len(p.data) for _, p in files), self.target_dir, new)
            return True
        finally:
            os.close(fd)

    def current_version(self) -> str | None:
        """The name of the published ``..<timestamp>`` dir, or None when nothing valid is."""
        fd = self._open_target()
        try:
            return self._current_version(fd)
        finally:
            os.close(fd)

    # ----------------------------------------------------------------------------- steps

    def _path(self, *names: str) -> str:
        return os.path.join(self.target_dir, *names)

    def _open_target(self) -> int:
        if self.root is not None:
            with open_dir_below(self.root, relative_components(self.root, self.target_dir)) as fd:
                return os.dup(fd)
        try:
            return os.open(self.target_dir, _DIR_FLAGS)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PathSafetyError(self.target_dir, "target is a symlink or not a directory", e.errno) from None
            raise

    @staticmethod
    def _current_version(fd: int) -> str | None:
        try:
            target = os.readlink(DATA_DIR, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:  # ..data exists but is not a symlink
                return None
            raise
        if not _TS_DIR_RE.match(target):
            return None  # not ours (planted, or foreign): replaced by the next swap
        try:
            st = os.stat(target, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return target if stat.S_ISDIR(st.st_mode) else None

    def _remove_leftovers(self, fd: int, keep: str | None) -> None:
        """Remove what an interrupted write left: version dirs other than `keep`, temp links."""
        for name in os.listdir(fd):
            if name in (DATA_TMP, LINK_TMP) or (_TS_DIR_RE.match(name) and name != keep):
                log.info("removing leftover %s of an interrupted write", self._path(name))
                self._remove_entry(fd, name)

    def _refuse_planted_dirs(self, fd: int, top_names: list[str]) -> None:
        if _lexists_dir(fd, DATA_DIR):
            raise PathSafetyError(self._path(DATA_DIR), "is a directory, not the writer's symlink", errno.EEXIST)
        for name in top_names:
            if _lexists_dir(fd, name):
                raise PathSafetyError(self._path(name), "a directory is where the key's symlink belongs", errno.EEXIST)

    def _tree_equals(self, fd: int, version: str, files: list[tuple[tuple[str, ...], FileProjection]]) -> bool:
        """Whether the version dir holds exactly `files` (bytes, mode, owner): reads only."""
        want = dict(files)
        want_dirs = {parts[:i] for parts in want for i in range(1, len(parts))}
        seen = 0
        try:
            vfd = os.open(version, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            return False
        stack: list[tuple[int, tuple[str, ...]]] = [(vfd, ())]
        try:
            while stack:
                dfd, prefix = stack.pop()
                try:
                    for name in os.listdir(dfd):
                        parts = prefix + (name,)
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            if parts not in want_dirs:
                                return False
                            stack.append((os.open(name, _DIR_FLAGS, dir_fd=dfd), parts))
                        elif stat.S_ISREG(st.st_mode):
                            proj = want.get(parts)
                            if proj is None or not _file_equals(dfd, name, proj):
                                return False
                            seen += 1
                        else:
                            return False  # a symlink, FIFO or device: not something we wrote
                finally:
                    os.close(dfd)
        except OSError:
            return False
        finally:
            for dfd, _ in stack:
                os.close(dfd)
        return seen == len(want)

    @staticmethod
    def _make_version_dir(fd: int) -> str:
        ns = time.time_ns()
        for _ in range(1000):
            sec, frac = divmod(ns, 1_000_000_000)
            name = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime(sec)) + f".{frac:09d}"
            try:
                os.mkdir(name, 0o700, dir_fd=fd)  # 0755 set below, umask-proof
                return name
            except FileExistsError:
                ns += 1
        raise FileExistsError(errno.EEXIST, "no free version directory name", "..<timestamp>")

    def _populate(self, fd: int, version: str, files: list[tuple[tuple[str, ...], FileProjection]],
                  durable: bool) -> None:
        vfd = os.open(version, _DIR_FLAGS, dir_fd=fd)
        dir_fds: dict[tuple[str, ...], int] = {(): vfd}
        try:
            os.fchmod(vfd, 0o755)
            for parts, proj in files:
                parent = self._ensure_dirs(dir_fds, parts[:-1])
                self._write_file(parent, parts[-1], proj, durable, self._path(version, *parts))
            if durable:  # children before parents: an entry is durable once its dir is
                for key in sorted(dir_fds, key=len, reverse=True):
                    os.fsync(dir_fds[key])
        finally:
            for dfd in dir_fds.values():
                os.close(dfd)

    @staticmethod
    def _ensure_dirs(dir_fds: dict[tuple[str, ...], int], parts: tuple[str, ...]) -> int:
        for i in range(1, len(parts) + 1):
            key = parts[:i]
            if key not in dir_fds:
                parent = dir_fds[parts[: i - 1]]
                os.mkdir(key[-1], 0o700, dir_fd=parent)
                dfd = os.open(key[-1], _DIR_FLAGS, dir_fd=parent)
                dir_fds[key] = dfd
                os.fchmod(dfd, 0o755)
        return dir_fds[parts]

    @staticmethod
    def _write_file(parent: int, name: str, proj: FileProjection, durable: bool, shown: str) -> None:
        try:
            ffd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent)
        except OSError as e:
            raise OSError(e.errno, e.strerror, shown) from None
        try:
            view = memoryview(proj.data)
            while view:
                view = view[os.write(ffd, view):]
            if proj.fs_user is not None:
                os.fchown(ffd, proj.fs_user, -1)
            os.fchmod(ffd, proj.mode)  # after chown (which may clear bits), umask-proof
            if durable:
                os.fsync(ffd)
        finally:
            os.close(ffd)

    def _add_links(self, fd: int, top_names: list[str]) -> bool:
        """Make every top-level name a symlink ``name -> ..data/name``. A symlink or file
        there with anything else is replaced atomically (rename never follows it)."""
        changed = False
        for name in top_names:
            want = f"{DATA_DIR}/{name}"
            try:
                if os.readlink(name, dir_fd=fd) == want:
                    continue
            except FileNotFoundError:
                os.symlink(want, name, dir_fd=fd)
                changed = True
                continue
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: a regular file, replaced below
                    raise
            os.symlink(want, LINK_TMP, dir_fd=fd)
            os.rename(LINK_TMP, name, src_dir_fd=fd, dst_dir_fd=fd)
            changed = True
        return changed

    def _swap(self, fd: int, version: str, durable: bool) -> None:
        os.symlink(version, DATA_TMP, dir_fd=fd)
        os.rename(DATA_TMP, DATA_DIR, src_dir_fd=fd, dst_dir_fd=fd)
        if durable:
            os.fsync(fd)

    def _remove_stale_links(self, fd: int, top_names: list[str]) -> bool:
        """Remove our links (exactly ``name -> ..data/name``) whose name is no longer a key."""
        keep = set(top_names)
        changed = False
        for name in os.listdir(fd):
            if name.startswith("..") or name in keep:
                continue
            try:
                target = os.readlink(name, dir_fd=fd)
            except OSError:
                continue  # not a symlink: not ours
            if target == f"{DATA_DIR}/{name}":
                try:
                    os.unlink(name, dir_fd=fd)
                    changed = True
                except FileNotFoundError:
                    pass
        return changed

    def _discard(self, fd: int, version: str) -> None:
        """Best-effort removal of a version that was never published (the caller re-raises)."""
        for name in (DATA_TMP, version):
            try:
                if name == version and self._current_version(fd) == version:
                    continue  # the swap happened after all: keep what ..data points to
                self._remove_entry(fd, name)
            except OSError:
                log.warning("could not remove %s after a failed write; removed on the next write",
                            self._path(name))

    @staticmethod
    def _remove_entry(fd: int, name: str) -> None:
        """Remove `name` in dir `fd`: a directory recursively without following any symlink
        (shutil.rmtree with dir_fd works on fds), anything else with unlink."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)

    def _sync(self, fd: int) -> None:
        durable = self.durable if self.durable is not None else not _fs_is_memory(fd)
        if durable:
            os.fsync(fd)


def _lexists_dir(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _file_equals(dfd: int, name: str, proj: FileProjection) -> bool:
    ffd = os.open(name, _READ_FLAGS, dir_fd=dfd)
    try:
        st = os.fstat(ffd)
        if (not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != proj.mode
                or st.st_size != len(proj.data)
                or (proj.fs_user is not None and st.st_uid != proj.fs_user)):
            return False
        chunks = []
        remaining = st.st_size + 1  # one more than expected: detect growth since fstat
        while remaining > 0:
            chunk = os.read(ffd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks) == bytes(proj.data)
    finally:
        os.close(ffd)
