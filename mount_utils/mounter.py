"""The `Mounter` interface, its Linux implementation and an in-memory fake.

Everything that changes the mount table goes through a `Mounter`, so the reconciler logic
can be unit-tested with `FakeMounter` and run for real with `LinuxMounter`.

`LinuxMounter` calls mount(2)/umount2(2) directly, except for filesystem types that need a
userspace helper (``mount.nfs`` does name resolution and version negotiation, ``mount.cifs``
reads credentials, FUSE needs its daemon): those exec ``mount -t TYPE -o OPTS SOURCE TARGET``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Collection, Sequence
from typing import Any, Protocol, runtime_checkable

from mount_utils import syscalls as sc
from mount_utils.child import helper_command
from mount_utils.mountinfo import DEFAULT_MOUNTINFO, MountInfo, MountPoints, MountTable, read_table_of_majors
from mount_utils.options import (
    MASK,
    flag_options,
    mask_options,
    split_mount_options,
    validate_mount_options,
)

# A helper mount (NFS with an unreachable server) can hang for minutes in the kernel's
# retries; the reconciler must get its thread back and treat the mount as uncertain.
MOUNT_COMMAND_TIMEOUT = 120.0
# After a timeout the killed mount(8) may take a moment to go; do not wait forever for it.
MOUNT_COMMAND_KILL_WAIT = 5.0
# Cap on how much of the helper's stderr goes into an error message.
MAX_STDERR_IN_ERROR = 2000

# Types that need a userspace helper (/sbin/mount.TYPE) and so go through mount(8).
_HELPER_TYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "fuse", "fuseblk"})

# Per-mount flags preserved when a bind mount is remounted (MS_REMOUNT|MS_BIND sets the
# per-mount flags to exactly what is passed, so without this a bind of a nosuid mount
# remounted read-only would silently become suid). statvfs ST_* values equal MS_* here.
_PRESERVED_ON_REMOUNT = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOSYMFOLLOW


def needs_helper(fs_type: str) -> bool:
    """Whether `fs_type` must be mounted through mount(8) and its helper."""
    return fs_type in _HELPER_TYPES or fs_type.startswith(("fuse.", "fuseblk."))


class MountError(OSError):
    """A mount or unmount failed. The message names the target (and source); options are
    shown with sensitive ones masked, never the data string itself.

    ``errno`` is the syscall's errno (ETIMEDOUT for a helper that timed out, in which case
    ``uncertain`` is True: the mount may have happened or may still happen).
    """

    def __init__(
        self,
        err: int,
        reason: str,
        target: str,
        *,
        source: str | None = None,
        operation: str = "mount",
        fs_type: str | None = None,
        shown_options: Sequence[str] = (),
        uncertain: bool = False,
    ) -> None:
        super().__init__(err, reason, target)
        self.target = target
        self.source = source
        self.operation = operation
        self.fs_type = fs_type
        self.shown_options = tuple(shown_options)
        self.uncertain = uncertain

    def __str__(self) -> str:
        what = self.operation
        if self.source is not None:
            what += f" {self.source!r} on"
        what += f" {self.target!r}"
        if self.fs_type:
            what += f" (type {self.fs_type}"
            what += f", options {','.join(self.shown_options)})" if self.shown_options else ")"
        elif self.shown_options:
            what += f" (options {','.join(self.shown_options)})"
        return f"{what} failed: {self.strerror}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the keyword-only arguments
        return (_rebuild_mount_error, (type(self), self.errno, self.strerror, self.target, self.__dict__))


def _rebuild_mount_error(cls: type[MountError], err: int, reason: str, target: str,
                         state: dict[str, Any]) -> MountError:
    e = cls.__new__(cls, err, reason, target)
    OSError.__init__(e, err, reason, target)
    e.__dict__.update(state)
    return e


class NotMountedError(MountError):
    """unmount of a path that is not a mount point (or does not exist)."""


@runtime_checkable
class Mounter(Protocol):
    """What the volume operations need from the mount table. Implementations are thread-safe."""

    def mount(
        self,
        source: str,
        target: str,
        fs_type: str,
        options: Sequence[str] = (),
        sensitive_options: Sequence[str] = (),
    ) -> None: ...

    def bind_mount(self, source: str, target: str, read_only: bool = False, options: Sequence[str] = ()) -> None: ...

    def mount_tmpfs(self, target: str, size_bytes: int | None = None, mode: int | None = None) -> None: ...

    def unmount(self, target: str) -> None: ...

    def is_mount_point(self, path: str) -> bool: ...

    def mount_table(self) -> MountTable: ...

    def mount_points(self) -> MountTable | MountPoints:
        """Something that answers ``is_mount_point`` for the whole table, as cheaply as the
        mounter can (a restart asks it of 10,000 paths)."""
        ...

    def device_mounts(self, majors: Collection[int]) -> MountTable:
        """A table holding at least every mount of a device with one of these major numbers
        (the whole table will do): what "is this device mounted anywhere?" needs."""
        ...

    def mount_refs(self, path: str) -> list[str]: ...


# Pauses between the quick retries of an unmount that failed with EBUSY (see unmount).
UMOUNT_BUSY_RETRIES = (0.001, 0.003, 0.006)


def _tmpfs_data(size_bytes: int | None, mode: int | None) -> str:
    data = []
    if size_bytes is not None:
        if size_bytes <= 0:
            raise ValueError(f"tmpfs size must be positive, got {size_bytes}")
        data.append(f"size={int(size_bytes)}")
    if mode is not None:
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"tmpfs mode {mode:o} is out of range")
        data.append(f"mode={mode:04o}")
    return ",".join(data)


def _split_bind(options: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether `options` ask for a bind mount, and the options without bind/rbind."""
    rest = [o for o in options if o not in ("bind", "rbind")]
    return len(rest) != len(options), rest


def _parent_real_path(path: str) -> str:
    """Resolve symlinks in the parent directories of `path`, not in its last component:
    the mount table lists resolved mount points, and a symlink itself is never a mount point."""
    parent, name = os.path.split(os.path.abspath(path))
    if not name:
        return parent
    return os.path.join(os.path.realpath(parent), name)


class LinuxMounter:
    """The real mounter. Stateless apart from configuration, so safe to share between threads."""

    def __init__(
        self,
        *,
        mount_command: str = "mount",
        command_timeout: float = MOUNT_COMMAND_TIMEOUT,
        mountinfo_path: str = DEFAULT_MOUNTINFO,
        use_statx: bool = True,
    ) -> None:
        self.mount_command = mount_command
        self.command_timeout = command_timeout
        self.mountinfo_path = mountinfo_path
        self.use_statx = use_statx

    # -- mounting ------------------------------------------------------------------------

    def mount(
        self,
        source: str,
        target: str,
        fs_type: str,
        options: Sequence[str] = (),
        sensitive_options: Sequence[str] = (),
    ) -> None:
        """Mount `source` on `target`. ``bind``/``rbind`` in `options` make it a bind mount;
        helper types (nfs, cifs, fuse.*) exec mount(8); everything else is one mount(2)."""
        options = validate_mount_options(options)
        sensitive_options = validate_mount_options(sensitive_options, sensitive=True)
        shown = mask_options(options, sensitive_options)
        if not fs_type or any(c in fs_type for c in ", \t\n\0") or fs_type.startswith("-"):
            raise ValueError(f"invalid filesystem type {fs_type!r} for {target!r}")
        bind, rest = _split_bind(options)
        if bind:
            if sensitive_options:
                # Sensitive data cannot be applied by a bind remount; refuse rather than drop it.
                raise ValueError(f"sensitive options are not supported for a bind mount on {target!r}")
            self._bind(source, target, rest, recursive="rbind" in options)
            return
        if needs_helper(fs_type):
            self._mount_command(source, target, fs_type, list(options) + list(sensitive_options), shown)
            return
        flags, data = split_mount_options(list(options) + list(sensitive_options))
        try:
            sc.sys_mount(source, target, fs_type, flags, data)
        except OSError as e:
            raise MountError(
                e.errno or errno.EIO, e.strerror or "mount failed", target,
                source=source, fs_type=fs_type, shown_options=shown,
            ) from None

    def _mount_command(self, source: str, target: str, fs_type: str, all_options: list[str], shown: list[str]) -> None:
        if source.startswith("-"):
            raise ValueError(f"mount source for {target!r} starts with '-'")
        argv = [self.mount_command, "-t", fs_type]
        if all_options:
            argv += ["-o", ",".join(all_options)]
        argv += ["--", source, target]
        # Helpers may echo an option or just its value ("password=x" or "x"): scrub both,
        # longest first so a value inside a whole option is not half-replaced.
        secrets = {o for o in all_options if o not in shown}
        secrets |= {o.partition("=")[2] for o in secrets if len(o.partition("=")[2]) >= 4}
        ordered = sorted(secrets, key=len, reverse=True)

        def scrub(text: str) -> str:
            for secret in ordered:
                text = text.replace(secret, MASK)
            return text.strip()[-MAX_STDERR_IN_ERROR:]

        err_kw: dict[str, Any] = {"source": source, "fs_type": fs_type, "shown_options": shown}
        try:
            run, preexec = helper_command(argv)
            proc = subprocess.run(
                run, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                preexec_fn=preexec, timeout=self.command_timeout, env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError:
            raise MountError(errno.ENOENT, f"{self.mount_command}: command not found", target, **err_kw) from None
        except subprocess.TimeoutExpired:
            raise MountError(
                errno.ETIMEDOUT,
                f"{self.mount_command} timed out after {self.command_timeout:g}s; the mount may still complete",
                target, uncertain=True, **err_kw,
            ) from None
        if proc.returncode != 0:
            detail = scrub(proc.stderr) or scrub(proc.stdout) or "no output"
            raise MountError(
                errno.EIO, f"{self.mount_command} exited with status {proc.returncode}: {detail}", target, **err_kw
            )

    def bind_mount(self, source: str, target: str, read_only: bool = False, options: Sequence[str] = ()) -> None:
        """Bind `source` on `target`; read-only (and other flag options) via a remount step.

        If the remount fails the bind is undone, so a failed read-only bind never leaves a
        writable view behind.
        """
        options = list(validate_mount_options(options))
        if read_only:
            options.append("ro")
        _, rest = _split_bind(options)
        self._bind(source, target, rest, recursive="rbind" in options)

    def _bind(self, source: str, target: str, options: Sequence[str], recursive: bool = False) -> None:
        try:
            extra = flag_options(options)
        except ValueError as e:
            raise ValueError(f"bind mount on {target!r}: {e}") from None
        bind_flags = sc.MS_BIND | (sc.MS_REC if recursive else 0)
        try:
            sc.sys_mount(source, target, None, bind_flags, None)
        except OSError as e:
            raise MountError(e.errno or errno.EIO, e.strerror or "bind failed", target,
                             source=source, operation="bind mount") from None
        if not extra:
            return
        try:
            current = os.statvfs(target).f_flag & _PRESERVED_ON_REMOUNT
            sc.sys_mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | current | extra, None)
        except OSError as e:
            try:
                sc.sys_umount(target, sc.UMOUNT_NOFOLLOW)
                outcome, uncertain = "bind undone", False
            except OSError as undo:
                # The writable bind is still there: the caller must treat it as mounted.
                outcome, uncertain = f"undoing the bind also failed ({undo.strerror})", True
            raise MountError(
                e.errno or errno.EIO, f"remount with {','.join(options)} failed ({e.strerror}); {outcome}",
                target, source=source, operation="bind mount", uncertain=uncertain,
            ) from None

    def mount_tmpfs(self, target: str, size_bytes: int | None = None, mode: int | None = None) -> None:
        """Mount a fresh tmpfs (nosuid, nodev) on `target`."""
        data = _tmpfs_data(size_bytes, mode)
        try:
            sc.sys_mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, data)
        except OSError as e:
            raise MountError(e.errno or errno.EIO, e.strerror or "mount failed", target,
                             source="tmpfs", fs_type="tmpfs", shown_options=data.split(",") if data else ()) from None

    # -- unmounting ----------------------------------------------------------------------

    def unmount(self, target: str) -> None:
        """Unmount the top mount at `target` (never following a symlink at `target`).

        Raises `NotMountedError` when `target` is missing or not a mount point, `MountError`
        otherwise (EBUSY: still in use). An EBUSY is tried again a few times within ~10 ms
        first: a path lookup by anyone (a stat of the mount point by a monitoring agent, a
        shell's completion) holds a reference to the mount for its duration, and umount2 then
        fails although nothing uses it; without the quick retry that cost a 0.5 s backoff.
        """
        err = self._umount_retrying_busy(target)
        if err is None:
            return
        code = err.errno or errno.EIO
        if code == errno.ENOENT:
            raise NotMountedError(code, "no such file or directory", target, operation="unmount") from None
        if code == errno.EINVAL and not self.is_mount_point(target):
            raise NotMountedError(code, "not a mount point", target, operation="unmount") from None
        raise MountError(code, err.strerror or "unmount failed", target, operation="unmount") from None

    @staticmethod
    def _umount_retrying_busy(target: str) -> OSError | None:
        """umount2 `target`; None when it worked, else the last error (EBUSY only after the
        quick retries of UMOUNT_BUSY_RETRIES)."""
        for pause in (*UMOUNT_BUSY_RETRIES, None):
            try:
                sc.sys_umount(target, sc.UMOUNT_NOFOLLOW)
                return None
            except OSError as e:
                if e.errno != errno.EBUSY or pause is None:
                    return e
            time.sleep(pause)
        return None  # not reached: the last pause is None

    # -- queries -------------------------------------------------------------------------

    def is_mount_point(self, path: str) -> bool:
        """Whether `path` itself (not following a final symlink) is the root of a mount.

        statx's STATX_ATTR_MOUNT_ROOT answers in one syscall and is right for bind mounts of
        the same filesystem; where it cannot answer, or the path cannot be stat'ed (a stale
        NFS or dead FUSE mount: ENOTCONN, ESTALE, EIO ...), the mount table decides.
        A missing path is not a mount point.
        """
        if self.use_statx:
            try:
                answer = sc.statx_mount_root(path)
            except FileNotFoundError:
                return False
            except NotADirectoryError:
                return False
            except OSError:
                answer = None
            if answer is not None:
                return answer
        try:
            resolved = _parent_real_path(path)
        except OSError:
            resolved = os.path.abspath(path)
        if self.mount_table().is_mount_point(resolved):
            return True
        return False

    def mount_table(self) -> MountTable:
        return MountTable.read(self.mountinfo_path)

    def mount_points(self) -> MountPoints:
        """The mount points of the table only: each line split once, nothing else parsed
        (a whole MountTable of 10,000 mounts is ~0.1 s of a restart)."""
        with open(self.mountinfo_path, "rb") as f:
            return MountPoints(f.read().split(b"\n"))

    def device_mounts(self, majors: Collection[int]) -> MountTable:
        return read_table_of_majors(majors, self.mountinfo_path)

    def mount_refs(self, path: str) -> list[str]:
        """Other mount points of the same device and root as the mount at `path`."""
        return self.mount_table().refs(os.path.realpath(path))


# -- the fake -----------------------------------------------------------------------------

# Device numbers the fake uses: the "host filesystem" that plain directories live on, and
# the first anonymous device for tmpfs / unknown sources.
_FAKE_HOST_DEV = (254, 0)
_FAKE_FIRST_ANON_MINOR = 100

_MUTATING = frozenset({"mount", "bind_mount", "mount_tmpfs", "unmount"})


class FakeMounter:
    """An in-memory `Mounter` for unit tests of reconciler logic.

    Every call is appended to ``.log`` as a tuple whose first element is the method name:
    ``("mount", source, target, fs_type, options, sensitive_options)``,
    ``("bind_mount", source, target, read_only, options)``,
    ``("mount_tmpfs", target, size_bytes, mode)``, ``("unmount", target)``,
    ``("is_mount_point", path)``, ``("mount_table",)``, ``("mount_refs", path)``.
    (The log holds sensitive options as given: it is a test record, never printed.)

    It keeps its own table (`mount_table()` returns a `MountTable` of `MountInfo` entries with
    synthetic IDs and devices: a bind mount shares major:minor and root with its source, so
    `mount_refs` works). It does not touch the filesystem, unless ``require_targets=True``,
    in which case a missing target raises ENOENT like the real thing.

    `fail_next(path, ...)` makes the next call on `path` raise.
    """

    def __init__(self, *, require_targets: bool = False, initial: Sequence[MountInfo] = ()) -> None:
        self.require_targets = require_targets
        self.log: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._mounts: list[MountInfo] = list(initial)
        self._next_id = max((m.mount_id for m in self._mounts), default=1000) + 1
        self._next_minor = _FAKE_FIRST_ANON_MINOR
        self._failures: dict[str, list[tuple[str | None, BaseException | None]]] = {}

    # -- test controls -------------------------------------------------------------------

    def fail_next(self, path: str, error: BaseException | None = None, *, operation: str | None = None) -> None:
        """Make the next call on `path` (of `operation` only, if given; else the next mutating
        call: mount, bind_mount, mount_tmpfs or unmount) raise `error` (default: a
        `MountError` with EIO). Several failures for one path queue up in order."""
        path = os.path.normpath(path)
        self._failures.setdefault(path, []).append((operation, error))

    def calls(self, name: str) -> list[tuple[Any, ...]]:
        """The log entries of one method."""
        return [c for c in self.log if c[0] == name]

    def clear_log(self) -> None:
        self.log.clear()

    @property
    def mounts(self) -> list[MountInfo]:
        with self._lock:
            return list(self._mounts)

    # -- internals -----------------------------------------------------------------------

    def _record(self, entry: tuple[Any, ...]) -> None:
        self.log.append(entry)
        name, path = entry[0], None
        if name in ("mount", "bind_mount"):
            path = entry[2]
        elif len(entry) > 1:
            path = entry[1]
        if path is None:
            return
        queue = self._failures.get(os.path.normpath(path))
        if not queue:
            return
        for i, (op, error) in enumerate(queue):
            if op == name or (op is None and name in _MUTATING):
                del queue[i]
                if error is None:
                    error = MountError(errno.EIO, "injected failure", path, operation=name)
                raise error

    def _check_target(self, target: str) -> None:
        if self.require_targets and not os.path.lexists(target):
            raise MountError(errno.ENOENT, "no such file or directory", target)

    def _top(self, path: str) -> MountInfo | None:
        path = os.path.normpath(path)
        found = [m for m in self._mounts if m.mount_point == path]
        return found[-1] if found else None

    def _containing(self, path: str) -> MountInfo | None:
        """The fake mount whose mount point is the longest prefix of `path`."""
        path = os.path.normpath(path)
        best: MountInfo | None = None
        for m in self._mounts:
            mp = m.mount_point
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                if best is None or len(mp) >= len(best.mount_point):
                    best = m
        return best

    def _anon_dev(self) -> tuple[int, int]:
        minor = self._next_minor
        self._next_minor += 1
        return (0, minor)

    def _add(self, target: str, dev: tuple[int, int], root: str, fs_type: str, source: str,
             mount_options: Sequence[str], super_options: Sequence[str] = ()) -> None:
        target = os.path.normpath(target)
        parent = self._containing(target)
        mi = MountInfo(
            mount_id=self._next_id, parent_id=parent.mount_id if parent else 1,
            major=dev[0], minor=dev[1], root=root, mount_point=target,
            mount_options=tuple(mount_options), optional_fields=(), fs_type=fs_type,
            source=source, super_options=tuple(super_options),
        )
        self._next_id += 1
        self._mounts.append(mi)

    # -- Mounter -------------------------------------------------------------------------

    def mount(self, source: str, target: str, fs_type: str, options: Sequence[str] = (),
              sensitive_options: Sequence[str] = ()) -> None:
        with self._lock:
            self._record(("mount", source, target, fs_type, tuple(options), tuple(sensitive_options)))
            options = validate_mount_options(options)
            validate_mount_options(sensitive_options, sensitive=True)
            self._check_target(target)
            bind, rest = _split_bind(options)
            if bind:
                self._bind_locked(source, target, rest)
                return
            flags, data = split_mount_options(options)
            opts = ["ro" if flags & sc.MS_RDONLY else "rw"]
            super_opts = [opts[0]] + ([data] if data else []) + ([MASK] if sensitive_options else [])
            existing = [m for m in self._mounts if m.source == source and m.fs_type == fs_type]
            dev = existing[0].device if existing and source.startswith("/dev/") else self._anon_dev()
            self._add(target, dev, "/", fs_type, source, opts, super_opts)

    def _bind_locked(self, source: str, target: str, options: Sequence[str]) -> None:
        flags = flag_options(options)
        inner = self._containing(source)
        if inner is not None:
            rel = os.path.relpath(os.path.normpath(source), inner.mount_point)
            root = os.path.normpath(os.path.join(inner.root, rel)) if rel != "." else inner.root
            dev, fs_type, src = inner.device, inner.fs_type, inner.source
        else:
            root, dev, fs_type, src = os.path.normpath(source), _FAKE_HOST_DEV, "ext4", "/dev/fake-root"
        self._add(target, dev, root, fs_type, src, ["ro" if flags & sc.MS_RDONLY else "rw"])

    def bind_mount(self, source: str, target: str, read_only: bool = False, options: Sequence[str] = ()) -> None:
        with self._lock:
            self._record(("bind_mount", source, target, read_only, tuple(options)))
            options = list(validate_mount_options(options)) + (["ro"] if read_only else [])
            self._check_target(target)
            self._bind_locked(source, target, _split_bind(options)[1])

    def mount_tmpfs(self, target: str, size_bytes: int | None = None, mode: int | None = None) -> None:
        with self._lock:
            self._record(("mount_tmpfs", target, size_bytes, mode))
            data = _tmpfs_data(size_bytes, mode)
            self._check_target(target)
            self._add(target, self._anon_dev(), "/", "tmpfs", "tmpfs", ["rw", "nosuid", "nodev"],
                      ["rw"] + ([data] if data else []))

    def unmount(self, target: str) -> None:
        with self._lock:
            self._record(("unmount", target))
            top = self._top(target)
            if top is None:
                raise NotMountedError(errno.EINVAL, "not a mount point", target, operation="unmount")
            children = [m for m in self._mounts if m.parent_id == top.mount_id]
            if children:
                raise MountError(errno.EBUSY, "target is busy (has submounts)", target, operation="unmount")
            self._mounts.remove(top)

    def is_mount_point(self, path: str) -> bool:
        with self._lock:
            self._record(("is_mount_point", path))
            return self._top(path) is not None

    def mount_table(self) -> MountTable:
        with self._lock:
            self._record(("mount_table",))
            return MountTable(self._mounts)

    def mount_points(self) -> MountTable:
        return self.mount_table()

    def device_mounts(self, majors: Collection[int]) -> MountTable:
        return self.mount_table()

    def mount_refs(self, path: str) -> list[str]:
        with self._lock:
            self._record(("mount_refs", path))
            return MountTable(self._mounts).refs(path)


def default_mounter() -> Mounter:
    """The mounter the daemon uses."""
    return LinuxMounter()


__all__ = [
    "FakeMounter",
    "LinuxMounter",
    "MOUNT_COMMAND_TIMEOUT",
    "MountError",
    "Mounter",
    "NotMountedError",
    "default_mounter",
    "needs_helper",
]
