"""The in-tree NFS plugin (``kubernetes.io/nfs``): one NFS mount per pod, like the kubelet's.

NFS is *not* device-mountable: there is no node-global stage, so each (pod, volume) has its
own volume id and the operations of different pods run in parallel (the kubelet learned this
the hard way with EFS, kubernetes#105642).

Everything that may touch the server is bounded, because a dead NFS server blocks syscalls in
the kernel (D state) where no signal reaches them:

* before mounting, ``netprobe.check_reachable`` fails fast (``TransientError NFS_UNREACHABLE``);
* the mount itself runs on a worker thread with ``NFS_MOUNT_TIMEOUT`` (→ ``UncertainError``,
  since ``mount.nfs`` may still finish);
* teardown runs ``cleanup_mount_point`` on a worker with ``NFS_UNMOUNT_TIMEOUT``
  (→ ``UncertainError``); only one such worker per path is ever outstanding;
* ``stat``/``statvfs`` of the mount go through ``bounded_io``.

No lazy unmount (``umount -l``) is done, by default or otherwise: it would hide the mount from
the table while the server still holds dirty pages and open files, and the pod directory could
then be removed with data in flight. A hung unmount stays visible as ``uncertain`` and is retried.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Mapping

from mount_utils.cleanup import cleanup_mount_point
from mount_utils.options import validate_mount_options
from mount_utils.paths import PathSafetyError, safe_makedirs
from operation_executor.errors import FinalError, UncertainError
from operation_executor.plugin import FS_GROUP_WALK, VolumePlugin
from operation_executor.types import PodRef, VolumeSpec
from volumemanager.manifests.models import NFSSource
from volumemanager.bounded_io import BoundedIOTimeout, bounded_statvfs, run_bounded, stats_from_statvfs
from volumemanager.plugins import netprobe
from volumemanager.plugins.fsutil import teardown_error

log = logging.getLogger(__name__)

PLUGIN_NAME = "kubernetes.io/nfs"

#: ``mount.nfs`` may retry for up to 2 minutes by default; 60 s is far above a healthy mount
#: (tens of ms) and keeps one bad server from occupying an operation slot for long. The mount
#: may complete after we gave up, hence the result is "uncertain", never "failed".
NFS_MOUNT_TIMEOUT = 60.0

#: Unmounting a healthy NFS mount takes milliseconds (a flush of dirty pages at most); after
#: 30 s the server is presumed hung and the unmount is reported uncertain and retried later.
NFS_UNMOUNT_TIMEOUT = 30.0

#: Checking whether the pod path is already a mount point, and statvfs for metrics: both may
#: block on a hung server; a few seconds is plenty for a live one.
NFS_STAT_TIMEOUT = 5.0

PROC_FILESYSTEMS = "/proc/filesystems"
MOUNT_NFS_CANDIDATES = ("/sbin/mount.nfs", "/usr/sbin/mount.nfs")


def nfs_source_string(server: str, path: str) -> str:
    """``server:/path``; an IPv6 literal is bracketed (``[fd00::1]:/export``) as mount.nfs wants."""
    if ":" in server and not server.startswith("["):
        server = f"[{server}]"
    return f"{server}:{path}"


def build_mount_command(server: str, path: str, target: str, options: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The ``mount`` command line for an NFS mount (``mount -t nfs [-o opts] server:/path target``).

    The mounter runs the equivalent for helper filesystems; this is what operators see in the
    log and what tests check. Options are validated (no commas, no leading ``-``) first.
    """
    opts = validate_mount_options(tuple(options))
    cmd = ["mount", "-t", "nfs"]
    if opts:
        cmd += ["-o", ",".join(opts)]
    cmd += [nfs_source_string(server, path), target]
    return cmd


def nfs_unsupported_reason(proc_filesystems: str = PROC_FILESYSTEMS) -> str | None:
    """None when this host can mount NFS; otherwise the reason, naming the file or tool."""
    try:
        with open(proc_filesystems, encoding="ascii", errors="replace") as f:
            names = {line.split()[-1] for line in f if line.strip()}
    except OSError as err:
        return f"cannot read {proc_filesystems}: {err.strerror}"
    if not names & {"nfs", "nfs4"}:
        return f"this kernel has no nfs filesystem (not in {proc_filesystems})"
    if not (shutil.which("mount.nfs") or any(os.access(p, os.X_OK) for p in MOUNT_NFS_CANDIDATES)):
        return "mount.nfs is not installed (Debian package nfs-common)"
    return None


def _port_from_options(options: tuple[str, ...]) -> int:
    """The NFS port from a ``port=N`` mount option (0 or absent: the standard 2049)."""
    for option in options:
        if option.startswith("port="):
            try:
                port = int(option[5:])
            except ValueError:
                continue
            if 0 < port < 65536:
                return port
    return netprobe.NFS_PORT


class NFSPlugin(VolumePlugin):
    """``spec.source`` is duck-typed: ``.server``, ``.path``, ``.read_only``."""

    name = PLUGIN_NAME
    durable_intents = False  # its only effect is a mount: see VolumePlugin.durable_intents

    # Every syscall of the fsGroup walk is a round trip to the server: threads overlap them.
    fs_group_walk_workers = 8

    def can_support(self, source: object) -> bool:
        return isinstance(source, NFSSource)

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        return FS_GROUP_WALK  # the kubelet walks NFS volumes too (not read-only ones)

    def __init__(
        self,
        host,
        connect_timeout: float = netprobe.NFS_CONNECT_TIMEOUT,
        mount_timeout: float = NFS_MOUNT_TIMEOUT,
        unmount_timeout: float = NFS_UNMOUNT_TIMEOUT,
        stat_timeout: float = NFS_STAT_TIMEOUT,
        proc_filesystems: str = PROC_FILESYSTEMS,
    ) -> None:
        super().__init__(host)
        self.connect_timeout = connect_timeout
        self.mount_timeout = mount_timeout
        self.unmount_timeout = unmount_timeout
        self.stat_timeout = stat_timeout
        self.proc_filesystems = proc_filesystems
        self._busy_lock = threading.Lock()
        self._busy: dict[str, threading.Event] = {}  # path -> "its worker finished"

    # --- identity -------------------------------------------------------------------------

    def is_device_mountable(self, spec: VolumeSpec) -> bool:
        return False

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        return self.host.pod_volume_dir(pod.uid, self.name, spec.name)

    def mount_options(self, spec: VolumeSpec) -> tuple[str, ...]:
        """spec.mountOptions, plus ``ro`` when the volume is read-only (FinalError if invalid)."""
        try:
            options = validate_mount_options(tuple(spec.mount_options))
        except ValueError as err:
            raise FinalError(f"invalid mountOptions of volume {spec.name}: {err}",
                             code="INVALID_MOUNT_OPTIONS") from None
        read_only = spec.read_only or bool(getattr(spec.source, "read_only", False))
        if read_only and "ro" not in options:
            options = options + ("ro",)
        return options

    # --- bounded workers ------------------------------------------------------------------

    def _bounded(self, path: str, fn, timeout: float, what: str):
        """Run ``fn`` on a worker; at most one worker per path, so a hung server costs one
        thread per volume, not one per retry."""
        with self._busy_lock:
            pending = self._busy.get(path)
            if pending is not None and not pending.is_set():
                raise UncertainError(f"an earlier {what} of {path} is still blocked (NFS server hung?)",
                                     code="NFS_TIMEOUT")
            finished = threading.Event()
            self._busy[path] = finished

        def job():
            try:
                return fn()
            finally:
                finished.set()
                with self._busy_lock:
                    if self._busy.get(path) is finished:
                        del self._busy[path]

        try:
            return run_bounded(job, timeout, f"{what} of {path}")
        except BoundedIOTimeout as err:
            raise UncertainError(f"{err} (NFS server hung?); will retry", code="NFS_TIMEOUT") from None

    # --- pod layer ------------------------------------------------------------------------

    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        source = spec.source
        target = self.mount_path(spec, pod, outer_name)
        mounter = self.host.mounter
        options = self.mount_options(spec)
        # Even lstat of the mount point blocks on a hung server, so the whole check is bounded.
        if self._bounded(target, lambda: os.path.lexists(target) and mounter.is_mount_point(target),
                         self.stat_timeout, "mount point check"):
            return  # already set up (idempotent; e.g. after a daemon restart)

        netprobe.check_reachable(source.server, port=_port_from_options(options), timeout=self.connect_timeout)
        reason = nfs_unsupported_reason(self.proc_filesystems)
        if reason:
            raise FinalError(reason, code="NFS_UNSUPPORTED")

        try:
            safe_makedirs(self.host.root_dir, target, 0o750)
        except PathSafetyError as err:
            raise FinalError(f"refusing to create {target}: {err}", code="UNSAFE_PATH") from None
        remote = nfs_source_string(source.server, source.path)
        log.info("mounting NFS %s at %s: %s", remote, target,
                 " ".join(build_mount_command(source.server, source.path, target, options)))
        try:
            self._bounded(target, lambda: mounter.mount(remote, target, "nfs", options),
                          self.mount_timeout, "NFS mount")
        except UncertainError:
            raise
        except Exception as err:
            # mount(8) timed out (it may still finish) or something did get mounted: uncertain.
            if getattr(err, "uncertain", False) or self._is_mounted(target):
                raise UncertainError(f"mounting NFS {remote} at {target}: {err}", code="MOUNT_UNCERTAIN") from None
            self._cleanup_after_failed_mount(target)
            raise FinalError(f"mounting NFS {remote} at {target} failed: {err}", code="MOUNT_FAILED") from None

    def _is_mounted(self, target: str) -> bool:
        try:
            return bool(self.host.mounter.is_mount_point(target))
        except OSError:
            return True  # cannot tell: assume the worst

    def _cleanup_after_failed_mount(self, target: str) -> None:
        """Remove the directory we created, only if it is empty and not a mount point."""
        try:
            if not self.host.mounter.is_mount_point(target):
                os.rmdir(target)
        except OSError:
            pass

    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        mounter = self.host.mounter
        try:
            self._bounded(mount_path, lambda: cleanup_mount_point(mount_path, mounter),
                          self.unmount_timeout, "NFS unmount")
        except UncertainError:
            raise
        except Exception as err:
            # EBUSY names the holders, found from /proc alone (never a stat on the NFS mount).
            raise teardown_error(mount_path, err, f"unmounting NFS volume at {mount_path} failed") from None

    # --- optional capabilities ------------------------------------------------------------

    def volume_stats(self, spec: VolumeSpec, mount_path: str) -> Mapping[str, int] | None:
        try:
            st = bounded_statvfs(mount_path, self.stat_timeout)
        except (BoundedIOTimeout, OSError) as err:
            log.warning("no stats for NFS volume at %s: %s", mount_path, err)
            return None
        return stats_from_statvfs(st)


__all__ = ["NFSPlugin", "build_mount_command", "nfs_unsupported_reason", "nfs_source_string"]
