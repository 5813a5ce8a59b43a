"""hostPath: a path on the host, bind-mounted into the pod's volume directory.

The kubelet leaves hostPath to the container runtime; without one, the pod's view of the
volume is ours to provide, so SetUp bind-mounts the host path at the pod's volume path. The
``type`` checks are the kubelet's. The host path's data is never touched on teardown: only
our bind mount and the (empty) mount point we created go away.
"""

from __future__ import annotations

import os
import stat

from mount_utils.cleanup import cleanup_mount_point, remove_empty_dirs
from mount_utils.mounter import MountError
from mount_utils.paths import safe_create_file, safe_makedirs
from operation_executor.errors import FinalError, WaitingError
from operation_executor.plugin import VolumePlugin
from operation_executor.types import PodRef, VolumeSpec
from volumemanager.manifests.models import HostPathSource
from volumemanager.plugins.fsutil import teardown_error

HOST_PATH_PLUGIN = "kubernetes.io/host-path"

# What each type requires of the host path: (stat predicate, description).
_TYPE_CHECKS = {
    "Directory": (stat.S_ISDIR, "a directory"),
    "File": (stat.S_ISREG, "a regular file"),
    "Socket": (stat.S_ISSOCK, "a unix socket"),
    "CharDevice": (stat.S_ISCHR, "a character device"),
    "BlockDevice": (stat.S_ISBLK, "a block device"),
}


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class HostPathPlugin(VolumePlugin):
    name = HOST_PATH_PLUGIN
    durable_intents = False  # its only effect is a mount: see VolumePlugin.durable_intents
    # The default lane, not the quick one: the host path may sit on a dead NFS mount, where
    # its stat or bind blocks; that must cost one general worker, not the emptyDir workers.
    statvfs_stats = True

    def can_support(self, source: object) -> bool:
        return isinstance(source, HostPathSource)

    def fs_group_skip_reason(self, spec: VolumeSpec) -> str:
        # fs_group_mode stays None: the host's files are the host's, never chowned for a pod.
        return "hostPath volumes never take an fsGroup"

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        return self.host.pod_volume_dir(pod.uid, self.name, outer_name)

    def _prepare_source(self, path: str, kind: str) -> os.stat_result:
        """Apply the type's checks (and creation for the *OrCreate types)."""
        if kind == "DirectoryOrCreate" and not os.path.exists(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "FileOrCreate" and not os.path.exists(path):
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                raise WaitingError(
                    f"hostPath {path} (FileOrCreate): parent directory {parent} does not exist",
                    waiting_for=f"directory {parent}",
                    code="HOSTPATH_TYPE_CHECK",
                )
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
            os.close(fd)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise WaitingError(
                f"hostPath {path} does not exist", waiting_for=f"host path {path}", code="HOSTPATH_TYPE_CHECK"
            ) from None
        check = _TYPE_CHECKS.get(kind.removesuffix("OrCreate"))
        if check is not None and not check[0](st.st_mode):
            raise WaitingError(
                f"hostPath {path} is not {check[1]} (type {kind})",
                waiting_for=f"host path {path} to be {check[1]}",
                code="HOSTPATH_TYPE_CHECK",
            )
        return st

    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        src = spec.source
        root = self.host.root_dir
        if _is_under(os.path.realpath(src.path), os.path.realpath(root)):
            raise FinalError(f"hostPath {src.path} is inside the daemon's root dir {root}", code="INVALID_HOST_PATH")
        target = self.mount_path(spec, pod, outer_name)
        try:
            st = self._prepare_source(src.path, src.type)
            mounter = self.host.mounter
            if os.path.lexists(target) and mounter.is_mount_point(target):
                return
            if stat.S_ISDIR(st.st_mode):
                safe_makedirs(root, target, 0o750)
            else:
                safe_makedirs(root, os.path.dirname(target), 0o750)
                safe_create_file(root, target, 0o600)
            mounter.bind_mount(src.path, target, read_only=spec.read_only)
        except (WaitingError, FinalError):
            raise
        except MountError as e:
            raise FinalError(str(e), code="MOUNT_FAILED") from e
        except OSError as e:
            raise FinalError(f"cannot set up hostPath {src.path} at {target}: {e}", code="SETUP_FAILED") from e

    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        try:
            cleanup_mount_point(mount_path, self.host.mounter)
        except OSError as e:
            raise teardown_error(mount_path, e, f"cannot tear down {mount_path}") from e
        remove_empty_dirs(os.path.dirname(mount_path), os.path.join(self.host.root_dir, "pods"))
