"""No skeletons: the empty directories a torn-down pod leaves under ``pods/<uid>`` go away.

Plugins remove their own volume directory on tear-down, but the levels above it
(``pods/<uid>/volumes/<plugin>``, ``pods/<uid>/volumes``, ``pods/<uid>/volumeDevices/...``,
``pods/<uid>``) are shared by the pod's volumes, so no single plugin knows when they are
empty for good. This module does it in one place, for every plugin: after a pod's tear-down
succeeds and the pod is not desired, and once at start (after the desired state is read) for
skeletons an earlier run left behind.

Only ``rmdir`` of empty directories (``mount_utils.cleanup.remove_empty_dirs``, symlink-safe),
never a recursive delete; a mount point is never removed (it is skipped, and rmdir would
refuse it with EBUSY anyway). Only the known layout is walked: a volume directory is entered
only where its plugin puts the pod's view below it (CSI's ``mount``), which the caller says
through ``view_path`` (the plugins' ``pod_mount_path_on_disk``); a volume directory with
anything else in it is left alone.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from mount_utils.cleanup import remove_empty_dirs

log = logging.getLogger(__name__)

KINDS = ("volumes", "volumeDevices")

#: (the plugin's directory name under ``volumes/``, a volume directory, block?) -> the path of
#: the pod's view on disk: the volume directory itself, or a directory below it.
ViewPath = Callable[[str, str, bool], str]


def _same_dir(plugin_dir_name: str, volume_dir: str, block: bool) -> str:
    return volume_dir


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.path for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _skeleton_dirs(pod_dir: str, view_path: ViewPath) -> list[str]:
    """The pod's layout directories, deepest first."""
    out: list[str] = []
    for kind in KINDS:
        kind_dir = os.path.join(pod_dir, kind)
        for plugin_dir in _subdirs(kind_dir):
            for vol_dir in _subdirs(plugin_dir):
                view = view_path(os.path.basename(plugin_dir), vol_dir, kind == "volumeDevices")
                if (view != vol_dir and os.path.dirname(view) == vol_dir and os.path.isdir(view)
                        and not os.path.islink(view)):
                    out.append(view)
                out.append(vol_dir)
            out.append(plugin_dir)
        out.append(kind_dir)
    out.append(pod_dir)
    return out


def remove_pod_skeleton(pods_dir: str, uid: str, is_mount_point: Callable[[str], bool],
                        view_path: ViewPath = _same_dir) -> bool:
    """rmdir the empty layout directories of pod ``uid``, deepest first. True when
    ``pods/<uid>`` is gone. A non-empty directory or a mount point ends nothing but itself."""
    if not uid or "/" in uid or uid in (".", ".."):
        return False
    pod_dir = os.path.join(pods_dir, uid)
    if not os.path.isdir(pod_dir) or os.path.islink(pod_dir):
        return not os.path.lexists(pod_dir)
    for d in _skeleton_dirs(pod_dir, view_path):
        if not os.path.lexists(d):
            continue
        try:
            if is_mount_point(d):
                continue
            remove_empty_dirs(d, pods_dir)
        except OSError as e:
            log.debug("leaving %s: %s", d, e)
    return not os.path.lexists(pod_dir)


def sweep_pod_skeletons(pods_dir: str, keep: Callable[[str], bool], is_mount_point: Callable[[str], bool],
                        view_path: ViewPath = _same_dir) -> int:
    """Remove the empty skeletons of every pod under ``pods_dir`` for which ``keep(uid)`` is
    False (a desired pod keeps its directories). Returns how many pod dirs went away."""
    try:
        uids = sorted(os.listdir(pods_dir))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for uid in uids:
        if keep(uid):
            continue
        if remove_pod_skeleton(pods_dir, uid, is_mount_point, view_path):
            removed += 1
    if removed:
        log.info("removed the empty directories of %d torn-down pods", removed)
    return removed
