"""Per-volume filesystem statistics for metrics, gathered off the reconciler's thread.

Each mounted volume is asked through its plugin (CSI: NodeGetVolumeStats) or, for local
filesystems, with a statvfs bounded by a timeout, so a hung network filesystem delays only its
own sample, never the reconciler.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from operation_executor.plugin import PluginRegistry
from operation_executor.types import MountedVolume
from volumemanager.bounded_io import BoundedIOTimeout, bounded_statvfs, stats_from_statvfs

log = logging.getLogger(__name__)

# The kubelet refreshes volume stats once a minute; usage does not need to be fresher, and a
# thousand statvfs calls a minute is negligible.
VOLUME_STATS_SECONDS = 60.0
# One statvfs on a healthy local filesystem takes microseconds; longer means it is hung.
STATVFS_TIMEOUT_SECONDS = 2.0

# Every pod mount that may be mounted (the actual state's ``mounted_volumes``).
MountedVolumesReader = Callable[[], "list[MountedVolume]"]


def statvfs_dict(path: str) -> dict[str, int]:
    return stats_from_statvfs(bounded_statvfs(path, STATVFS_TIMEOUT_SECONDS))


class VolumeStatsCollector:
    def __init__(self, mounted_volumes: MountedVolumesReader, plugins: PluginRegistry, metrics,
                 interval: float = VOLUME_STATS_SECONDS) -> None:
        self._mounted_volumes = mounted_volumes
        self._plugins = plugins
        self._metrics = metrics
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vm-stats", daemon=True)
        self._known: set[tuple[str, str]] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.collect_once()
            except Exception:  # noqa: BLE001
                log.exception("volume stats collection failed")
            self._stop.wait(self._interval)

    def collect_once(self) -> None:
        seen: set[tuple[str, str]] = set()
        for mv in self._mounted_volumes():
            if mv.state.value != "mounted" or mv.spec.volume_mode == "Block":
                continue
            stats = None
            try:
                plugin = self._plugins.find(mv.plugin_name)
                stats = plugin.volume_stats(mv.spec, mv.mount_path)
                if stats is None and plugin.statvfs_stats and os.path.isdir(mv.mount_path):
                    stats = statvfs_dict(mv.mount_path)
            except (OSError, BoundedIOTimeout, KeyError) as e:
                log.debug("no stats for %s: %s", mv.mount_path, e)
            except Exception as e:  # noqa: BLE001 - a plugin's stats failure is not fatal
                log.debug("no stats for %s: %s", mv.mount_path, e)
            if stats:
                key = (mv.pod.key, mv.outer_name)
                seen.add(key)
                self._metrics.set_volume_stats(mv.pod.key, mv.outer_name, dict(stats))
        for pod, vol in self._known - seen:
            self._metrics.forget_volume_stats(pod, vol)
        self._known = seen
