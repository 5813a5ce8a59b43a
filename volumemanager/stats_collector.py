"""Per-volume filesystem statistics for metrics, gathered off the reconciler's thread.

Each mounted volume is asked through its plugin (CSI: NodeGetVolumeStats) or, for local
filesystems, with a statvfs bounded by a timeout, so a hung network filesystem delays only its
own sample, never the reconciler.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable, TypeVar

from operation_executor.plugin import PluginRegistry
from operation_executor.types import MountedVolume
from volumemanager.bounded_io import BoundedIOTimeout, bounded_statvfs, stats_from_statvfs

T = TypeVar("T")

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


class _BoundedCaller:
    """``bounded_io.run_bounded`` on one long-lived thread: a pass over 10,000 volumes made
    10,000 throw-away threads (~0.2 ms each, 2 s of CPU a minute); handing each call to the
    same thread costs ~30 us. A call that overruns its deadline keeps its thread (blocked in
    the kernel, e.g. on a dead NFS server); that thread is told to exit once it returns, and
    the next call gets a new one, so a hung filesystem still delays only its own sample."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue | None = None

    def call(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(self._queue,), name="vm-stats-io", daemon=True).start()
        box: dict[str, object] = {}
        done = threading.Event()
        self._queue.put((fn, box, done))
        if not done.wait(timeout):
            self._queue.put(None)  # handled once the blocked call returns: the thread ends
            self._queue = None
            raise BoundedIOTimeout(what, timeout)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["result"]  # type: ignore[return-value]

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._queue = None

    @staticmethod
    def _serve(q: queue.SimpleQueue) -> None:
        while (item := q.get()) is not None:
            fn, box, done = item
            try:
                box["result"] = fn()
            except BaseException as err:  # handed to the caller
                box["error"] = err
            finally:
                done.set()


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
        self._io = _BoundedCaller()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._io.close()

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
                    stats = stats_from_statvfs(self._io.call(lambda p=mv.mount_path: os.statvfs(p),
                                                             STATVFS_TIMEOUT_SECONDS, f"statvfs {mv.mount_path}"))
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
