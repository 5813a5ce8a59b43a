"""Notices mounts removed behind the daemon's back (``umount`` by hand, a crashed FUSE
driver) and hands the affected volumes back to the reconciler, which re-establishes them.

The kernel flags /proc/self/mountinfo with POLLPRI on every change to the mount table; the
watcher then reads the table once (debounced, so a burst of our own mounts costs one read)
and compares it with what the actual state believes is mounted. Only mounts the actual state
knows are checked: anything else is an orphan for ``status`` to show, not ours to remount.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Iterable, Protocol

from mount_utils.mounter import LinuxMounter
from mount_utils.mountinfo import MountInfoWatcher, MountPoints, MountTable
from operation_executor.plugin import PluginRegistry
from operation_executor.types import AttachedVolume, MarkDeviceOpts, MarkVolumeOpts, MountedVolume

log = logging.getLogger(__name__)

# A burst of mount changes (a thousand volumes coming up) is read once after it calms down...
DEBOUNCE_SECONDS = 0.1
# ... or after this long, so that a node where something mounts all the time still gets checked.
MAX_SETTLE_SECONDS = 1.0
# At most one check this often: on a node where containers start and stop all the time the
# table changes constantly, and a vanished mount re-established a second later is soon enough.
MIN_CHECK_INTERVAL_SECONDS = 1.0
# Safety net in case a change notification is missed: compare anyway this often.
PERIODIC_CHECK_SECONDS = 60.0
# A check walks every volume the actual state holds, and even a skipped one reads the table;
# the table changes with every mount on the node (other pods, other daemons), so checks
# triggered by changes are spaced to at least this many times their own duration: at most
# 0.2 % of a core however busy the node and however many volumes (at 10,000 volumes a read
# costs ~20 ms, so a vanished mount is noticed within ~10 s there, within a second or two at
# 1,000; the periodic check stays the backstop).
CHECK_SPACING_FACTOR = 500.0


class WatchedState(Protocol):
    """The part of the actual state of the world the watcher reads and marks."""

    def mounted_volumes(self) -> list[MountedVolume]: ...

    def attached_volumes(self) -> list[AttachedVolume]: ...

    def mark_volume_uncertain(self, opts: MarkVolumeOpts) -> None: ...

    def mark_device_uncertain(self, opts: MarkDeviceOpts) -> None: ...


# Whether an operation on (volume id, pod uid or None) is running or queued right now.
IsPending = Callable[..., bool]
# Hands volume ids back to the reconciler for its next pass.
MarkDirty = Callable[[Iterable[str]], None]


def _plugin_says(plugins: PluginRegistry, plugin_name: str, ask: Callable, default: bool = True) -> bool:
    try:
        return ask(plugins.find(plugin_name))
    except KeyError:
        return default


class MountWatcher:
    """``mounter`` reads the mount table; ``plugins`` say which views and stages must be
    mount points; ``asw`` is read and marked; ``is_pending`` and ``mark_dirty`` are the
    executor's and the reconciler's."""

    def __init__(self, mounter, root_dir: str, asw: WatchedState, plugins: PluginRegistry,
                 is_pending: IsPending, mark_dirty: MarkDirty) -> None:
        self._mounter = mounter
        self._root_dir = root_dir
        self._asw = asw
        self._plugins = plugins
        self._is_pending = is_pending
        self._mark_dirty = mark_dirty
        self._stop = threading.Event()
        # Written by stop(): wakes the thread out of its poll at once (a daemon restart must
        # not wait out a poll timeout).
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="vm-mountinfo", daemon=True)
        self.checks = 0
        # Reads of the table that changed nothing of ours, with an unchanged actual state: no check.
        self.skipped = 0
        self._last_seen: tuple[int, int] | None = None
        # The watcher's own read is the table only when the mounter is the kernel's.
        self._kernel_table = isinstance(mounter, LinuxMounter)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _run(self) -> None:
        try:
            watcher = MountInfoWatcher(wake_fd=self._wake_r)
        except OSError as e:
            log.warning("cannot watch mountinfo (%s); relying on periodic checks", e)
            watcher = None
        last_check = time.monotonic()
        spacing = MIN_CHECK_INTERVAL_SECONDS
        try:
            while not self._stop.is_set():
                changed = watcher.wait(1.0) if watcher is not None else self._stop.wait(1.0)
                if changed:
                    # Let a burst settle (a thousand volumes coming up), then read once.
                    settle_until = time.monotonic() + MAX_SETTLE_SECONDS
                    while (not self._stop.wait(DEBOUNCE_SECONDS) and watcher.wait(0)
                           and time.monotonic() < settle_until):
                        pass
                    since = time.monotonic() - last_check
                    if since < spacing and self._stop.wait(spacing - since):
                        break
                periodic = time.monotonic() - last_check >= PERIODIC_CHECK_SECONDS
                if changed or periodic:
                    last_check = time.monotonic()
                    try:
                        self._check_changed(watcher)
                    except Exception:  # noqa: BLE001
                        log.exception("mount table check failed")
                    spacing = max(MIN_CHECK_INTERVAL_SECONDS, (time.monotonic() - last_check) * CHECK_SPACING_FACTOR)
        finally:
            if watcher is not None:
                watcher.close()

    def _check_changed(self, watcher: MountInfoWatcher | None) -> None:
        """One check after a change (or the periodic one): skipped when neither our part of the
        table (the lines below the root dir, compared by hash) nor the actual state (its version)
        changed since the last check, since the check would find what it found then. The
        table changes with every mount on the node; a volume of ours that vanished changes
        our lines."""
        if watcher is None or not self._kernel_table:
            self.check_once()
            return
        lines = watcher.lines_under(self._root_dir)
        version = getattr(self._asw, "version", None)
        seen = (hash(tuple(lines)), version) if version is not None else None
        if seen is not None and seen == self._last_seen:
            self.skipped += 1
            return
        # Only our part of the table (every path checked is below the root), and of each line
        # only its mount point: a check of 10,000 volumes parsed 10,000 lines whole.
        self.check_once(MountPoints(lines))
        # The version read before the check: a change the check itself made (a volume marked
        # uncertain) bumps it, so the next read checks again.
        self._last_seen = seen

    def check_once(self, table: MountTable | MountPoints | None = None) -> set[str]:
        """Mark volumes whose mounts vanished as uncertain; returns their ids. ``table`` is a
        mount table read after the change being handled (default: read it now)."""
        self.checks += 1
        if table is None:
            table = self._mounter.mount_table()
        lost: set[str] = set()
        asw, plugins = self._asw, self._plugins
        for mv in asw.mounted_volumes():
            if mv.state.value != "mounted":
                continue
            # A view that is a plain directory (an emptyDir on disk) cannot vanish from the table.
            if not _plugin_says(plugins, mv.plugin_name, lambda p: p.pod_dir_is_mount_point(mv.spec)):
                continue
            if table.is_mount_point(mv.mount_path):
                continue
            if self._is_pending(mv.volume_id, mv.pod.uid):
                continue  # an operation is changing it right now
            if not self._still_mounted(mv.mount_path):
                log.warning("mount %s of %s vanished; re-establishing", mv.mount_path, mv.pod.key,
                            extra={"volume": mv.outer_name, "pod": mv.pod.key})
                asw.mark_volume_uncertain(MarkVolumeOpts(mv.volume_id, mv.pod, mv.outer_name, mv.spec, mv.plugin_name,
                                                         mv.mount_path, mv.device_mount_path is not None))
                lost.add(mv.volume_id)
        for av in asw.attached_volumes():
            if (av.device_mountable and av.device_state.value == "mounted" and av.device_mount_path
                    and _plugin_says(plugins, av.plugin_name, lambda p: p.device_mount_is_mount_point(av.spec))
                    and not table.is_mount_point(av.device_mount_path)
                    and not self._is_pending(av.volume_id)
                    and not self._still_mounted(av.device_mount_path)):
                log.warning("staging mount %s vanished", av.device_mount_path, extra={"volume": av.volume_id})
                asw.mark_device_uncertain(MarkDeviceOpts(av.volume_id, av.spec, av.plugin_name, av.device_path,
                                                         av.device_mount_path))
                lost.add(av.volume_id)
        if lost:
            self._mark_dirty(lost)
        return lost

    def _still_mounted(self, path: str) -> bool:
        """Ask the kernel again about a mount the table lacks: the table was read before the
        actual state was, so an operation that finished in between looks vanished in it."""
        try:
            return self._mounter.is_mount_point(path)
        except OSError:
            return False
