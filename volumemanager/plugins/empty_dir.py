"""emptyDir: scratch space that lives and dies with the pod.

``medium: ""`` is a directory on the node's disk under the pod dir; ``medium: Memory`` is a
tmpfs sized by ``sizeLimit``. Per-pod, no staging.
"""

from __future__ import annotations

import os

from mount_utils.cleanup import cleanup_mount_point, remove_empty_dirs
from mount_utils.holders import scan_holders
from mount_utils.mounter import MountError
from mount_utils.paths import safe_makedirs
from operation_executor.errors import FinalError, UncertainError
from operation_executor.executor import QUICK_LANE
from operation_executor.plugin import FS_GROUP_WALK, VolumePlugin
from operation_executor.types import PodRef, VolumeSpec
from volumemanager.manifests.models import EmptyDirSource
from volumemanager.plugins.fsutil import TreeRemovalRefused, busy_message, remove_tree_one_filesystem, teardown_error


EMPTY_DIR_PLUGIN = "kubernetes.io/empty-dir"
# kubelet creates emptyDir volumes world-writable: the pod's processes may run as any user.
EMPTY_DIR_MODE = 0o777
# How long the look for processes using a disk emptyDir may take before it is deleted: about
# 50 us a process, so this covers some 20,000 processes; past it the removal waits for a retry.
HOLDER_SCAN_DEADLINE_SECONDS = 1.0


class EmptyDirPlugin(VolumePlugin):
    name = EMPTY_DIR_PLUGIN
    durable_intents = False  # its only effect is a mount: see VolumePlugin.durable_intents
    statvfs_stats = True

    def can_support(self, source: object) -> bool:
        return isinstance(source, EmptyDirSource)

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        return FS_GROUP_WALK  # the kubelet gives every emptyDir the pod's fsGroup

    def pod_dir_is_mount_point(self, spec: VolumeSpec) -> bool:
        """On the node's disk an emptyDir is a plain directory; only Memory is a tmpfs mount."""
        return getattr(spec.source, "medium", "") == "Memory"

    def operation_lane(self, spec: VolumeSpec) -> str:
        return QUICK_LANE  # mkdir and a tmpfs mount (a tree removal on teardown): local only

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        return self.host.pod_volume_dir(pod.uid, self.name, outer_name)

    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        path = self.mount_path(spec, pod, outer_name)
        mounter = self.host.mounter
        try:
            safe_makedirs(self.host.root_dir, path, 0o750)
            os.chmod(path, EMPTY_DIR_MODE)
        except OSError as e:
            raise FinalError(f"cannot create {path}: {e.strerror or e}", code="MKDIR_FAILED") from e
        if spec.source.medium != "Memory":
            return
        if mounter.is_mount_point(path):
            return
        try:
            mounter.mount_tmpfs(path, size_bytes=spec.source.size_limit_bytes, mode=EMPTY_DIR_MODE)
        except MountError as e:
            raise FinalError(str(e), code="MOUNT_FAILED") from e

    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        """Unmount the tmpfs, or delete the on-disk scratch dir, unless a process still uses
        it: then nothing is deleted and the error (code BUSY) names who holds it. The retry
        comes with the executor's backoff; a lazy unmount or a delete under a running process
        would destroy data the process still works on."""
        mounter = self.host.mounter
        try:
            if os.path.lexists(mount_path) and mounter.is_mount_point(mount_path):
                cleanup_mount_point(mount_path, mounter, mounted=True)
            else:
                self._refuse_if_held(mount_path)
                remove_tree_one_filesystem(mount_path)
        except UncertainError:
            raise
        except TreeRemovalRefused as e:
            raise UncertainError(f"cannot remove emptyDir {mount_path}: {e.strerror}: {e.filename}", code="BUSY") from e
        except OSError as e:
            raise teardown_error(mount_path, e, f"cannot tear down {mount_path}") from e
        remove_empty_dirs(os.path.dirname(mount_path), os.path.join(self.host.root_dir, "pods"))

    def _refuse_if_held(self, path: str) -> None:
        if not os.path.lexists(path):
            return
        scan = scan_holders(path, deadline_seconds=HOLDER_SCAN_DEADLINE_SECONDS)
        if scan.holders:
            holders = tuple(scan.holders)
            raise UncertainError(busy_message(f"not deleting emptyDir {path}", "in use", holders), code="BUSY",
                                 holders=holders)
        if not scan.complete:
            # An unfinished scan proves nothing: deleting now could pull the data from under a
            # process we did not get to. Keep it and look again with the executor's backoff.
            raise UncertainError(f"not deleting emptyDir {path}: the look for processes using it stopped "
                                 f"after {scan.scanned} processes, before it could prove nobody does",
                                 code="BUSY")
