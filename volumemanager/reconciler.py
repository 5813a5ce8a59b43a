"""The reconciler: decides which operations would bring the actual state to the desired one,
and starts them. It never waits for an operation.

It is event driven. Whatever may change a volume's fate marks that volume *dirty*: a
desired-state change, an operation finishing, a device or driver event, a backoff expiring.
A pass looks only at the dirty volumes, so its cost follows what changed, not how many
volumes the node has. A slow full pass remains as a safety net for anything an event missed.

Order within a pass is the kubelet's: first unmount pods' views that are no longer desired
(so a volume moving between pods is released first), then mount what is desired, then unstage
devices that no pod uses. Nothing is unmounted until the desired state has been fully read
(``ready_to_unmount``), so a restart never tears down the volumes of running pods.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from operation_executor.errors import AlreadyPendingError, BackoffError, WaitingError
from operation_executor.executor import BatchItem, OperationExecutor, OperationKey, OperationOutcome
from operation_executor.generator import (
    EXPAND_VOLUME,
    MOUNT_VOLUME,
    UNMOUNT_DEVICE,
    UNMOUNT_VOLUME,
    OperationGenerator,
)
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import AttachedVolume, MountedVolume, VolumeToMount
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredStateOfWorld

log = logging.getLogger(__name__)

# A mounted pod view whose content (a ConfigMap, a Secret, the pod's labels) changed since it
# was set up: set it up again (the kubelet's RequiresRemount). Runs the mount operation.
REMOUNT_VOLUME = "remount_volume"

# Safety-net pass over every volume. Events drive the real work; this only catches what an
# event could have missed, so it can be slow (a pass over 1,000 volumes costs a few ms).
FULL_RESYNC_SECONDS = 60.0
# Volumes waiting for a device or a driver are re-examined on the matching event; this slow
# re-check covers events missed while no monitor was running.
WAITING_RECHECK_SECONDS = 5.0
# Upper bound on one sleep of the loop, so the watchdog hook runs even on an idle node.
MAX_IDLE_SLEEP_SECONDS = 10.0


# Consecutive quick-lane actions of one kind and plugin in a pass start as one work item of at
# most this many (issue 16): large enough that the per-operation hand-off, journal write and
# wake-ups are shared, small enough that the pool's workers still share a burst and a pod's
# volumes are not held behind a thousand others.
BATCH_SIZE = 32

# Executor keys of the controller steps (controller/<pv>): not node volumes.
CONTROLLER_KEY_PREFIX = "controller/"


@dataclass(frozen=True)
class Action:
    """One operation the reconciler wants to start (shown by ``plan``)."""

    kind: str  # mount_volume | remount_volume | unmount_volume | unmount_device | expand_volume
    volume_id: str
    pod_uid: str | None
    pod: str | None  # "namespace/name"
    outer_name: str | None
    plugin_name: str
    detail: str
    blocked_by: str | None = None  # "in progress: ..." / "backoff: retry in 3.2s"

    def to_dict(self) -> dict:
        return {
            "action": self.kind,
            "volume_id": self.volume_id,
            "pod": self.pod,
            "pod_uid": self.pod_uid,
            "volume": self.outer_name,
            "plugin": self.plugin_name,
            "detail": self.detail,
            "blocked_by": self.blocked_by,
        }


class Reconciler:
    def __init__(
        self,
        dsw: DesiredStateOfWorld,
        asw: ActualStateOfWorld,
        executor: OperationExecutor,
        generator: OperationGenerator,
        ready_to_unmount: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        full_resync_seconds: float = FULL_RESYNC_SECONDS,
    ) -> None:
        self._dsw = dsw
        self._asw = asw
        self._executor = executor
        self._generator = generator
        self._ready_to_unmount = ready_to_unmount
        self._clock = clock
        self._full_resync_seconds = full_resync_seconds
        self._cond = threading.Condition()
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._timers: list[tuple[float, str]] = []
        self._waiting: set[str] = set()
        self._stop = False
        self.passes = 0
        self.last_pass_at: float | None = None
        self.last_pass_duration = 0.0
        self.on_pass: list[Callable[[float, int], None]] = []
        # The daemon lowers this to the systemd watchdog's ping interval.
        self.max_idle_sleep = MAX_IDLE_SLEEP_SECONDS
        executor.add_batch_completion_callback(self._on_operations_complete)

    # --- events ---------------------------------------------------------------------------

    def mark_dirty(self, volume_ids: Iterable[str]) -> None:
        with self._cond:
            before = len(self._dirty)
            self._dirty.update(volume_ids)
            if len(self._dirty) != before:
                self._cond.notify()

    def mark_all_dirty(self) -> None:
        with self._cond:
            self._all_dirty = True
            self._cond.notify()

    def wake_waiting(self) -> None:
        """A device or driver event: re-examine every volume that waits for one."""
        with self._cond:
            if self._waiting:
                self._dirty |= self._waiting
                self._cond.notify()

    def expand_for_device(self, devnode: str | None, major: int | None, minor: int | None) -> list[str]:
        """A block device changed (it may have grown): start an online expansion of every
        staged, desired volume on it. Runs under the volume's whole key, so it never races
        a stage or unstage; a busy or backed-off volume is skipped (the next event retries)."""
        started: list[str] = []
        staged = self._asw.staged_devices()
        if not staged:
            return started
        target = _device_number(devnode, major, minor)
        if target is None:
            return started
        for volume_id, device_path in staged:
            if _device_number(device_path, None, None) != target or not self._dsw.volume_exists(volume_id):
                continue
            av = self._asw.get_volume(volume_id)
            if av is None or av.device_state is not DeviceMountState.MOUNTED:
                continue  # unstaged meanwhile
            op = self._generator.expand_volume(av)
            try:
                self._executor.run(OperationKey(av.volume_id), op.name, op.fn, plugin=av.plugin_name, lane=op.lane)
            except (AlreadyPendingError, BackoffError):
                continue
            started.append(av.volume_id)
        return started

    def waiting_volumes(self) -> set[str]:
        with self._cond:
            return set(self._waiting)

    def _schedule(self, delay: float, volume_id: str) -> None:
        with self._cond:
            heapq.heappush(self._timers, (self._clock() + delay, volume_id))
            self._cond.notify()

    def _on_operations_complete(self, outcomes: list[OperationOutcome]) -> None:
        """Once per work item (a batch's outcomes together): one wake-up of the loop."""
        now = self._clock()
        dirty: list[str] = []
        timed = False
        with self._cond:
            for outcome in outcomes:
                vid = outcome.key.volume_id
                if vid.startswith(CONTROLLER_KEY_PREFIX):
                    # The controller's keys (its own loop retries them): a node pass over such a key
                    # would find it neither desired nor mounted and forget its backoff at once.
                    continue
                if isinstance(outcome.error, WaitingError):
                    # Nothing will change until the awaited device or driver shows up: wait for its
                    # event (wake_waiting) or the slow re-check, never retry at once (a busy loop).
                    self._waiting.add(vid)
                    heapq.heappush(self._timers, (now + WAITING_RECHECK_SECONDS, vid))
                    timed = True
                    continue
                self._waiting.discard(vid)
                if outcome.error is not None:
                    heapq.heappush(self._timers, (now + self._executor.backoff_remaining(outcome.key) + 0.001, vid))
                # Success, or a failure now in backoff: look again (another pod of the volume may be
                # next, or an unmount may be due).
                dirty.append(vid)
            if dirty or timed:
                self._dirty.update(dirty)
                self._cond.notify()

    # --- the loop -------------------------------------------------------------------------

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def run(self, on_tick: Callable[[], None] | None = None) -> None:
        """Loop until ``stop``. ``on_tick`` runs after every wake-up (the systemd watchdog
        ping lives there, so a wedged loop stops pinging)."""
        last_full = self._clock()
        while True:
            with self._cond:
                while not self._stop:
                    now = self._clock()
                    due = self._pop_due_timers(now)
                    if due:
                        self._dirty |= due
                    if now - last_full >= self._full_resync_seconds:
                        self._all_dirty = True
                    if self._dirty or self._all_dirty:
                        break
                    wait = min(self.max_idle_sleep, last_full + self._full_resync_seconds - now)
                    if self._timers:
                        wait = min(wait, self._timers[0][0] - now)
                    self._cond.wait(max(wait, 0.0))
                    if on_tick is not None:
                        on_tick()
                if self._stop:
                    return
                full = self._all_dirty
                dirty = None if full else self._dirty
                self._dirty = set()
                self._all_dirty = False
            if full:
                last_full = self._clock()
            try:
                self.reconcile(dirty)
            except Exception:  # noqa: BLE001 - the loop must survive a bug in one pass
                log.exception("reconciler pass failed")
            if on_tick is not None:
                on_tick()

    def _pop_due_timers(self, now: float) -> set[str]:
        due: set[str] = set()
        while self._timers and self._timers[0][0] <= now:
            due.add(heapq.heappop(self._timers)[1])
        return due

    # --- one pass -------------------------------------------------------------------------

    def reconcile(self, volume_ids: set[str] | None = None) -> list[Action]:
        """One pass over ``volume_ids`` (None: all). Starts operations; returns what it started."""
        start = self._clock()
        actions = self.decide(volume_ids)
        started: list[Action] = []
        batch: list[tuple[Action, tuple]] = []
        for action in actions:
            target = self._batch_target(action)
            if batch and (target is None or not _same_batch(batch[0][0], action) or len(batch) >= BATCH_SIZE):
                started.extend(self._start_batch(batch))
                batch = []
            if target is not None:
                batch.append((action, target))
            elif self._start(action):
                started.append(action)
        if batch:
            started.extend(self._start_batch(batch))
        self._forget_gone(volume_ids)
        self.passes += 1
        self.last_pass_at = time.time()
        self.last_pass_duration = self._clock() - start
        for cb in self.on_pass:
            cb(self.last_pass_duration, len(started))
        return started

    def _forget_gone(self, volume_ids: set[str] | None) -> None:
        if volume_ids is None:
            return
        for vid in volume_ids:
            if not self._dsw.volume_exists(vid) and self._asw.get_volume(vid) is None and not self._executor.is_pending(vid):
                self._executor.forget_volume(vid)
                self._asw.forget_volume_results(vid)
                with self._cond:
                    self._waiting.discard(vid)

    def decide(self, volume_ids: set[str] | None = None, desired=None) -> list[Action]:
        """The operations this pass would start, in order, without starting any (an action
        whose key is busy or backing off is still listed: the executor has the last word).
        ``desired`` replaces the desired state for this answer only (``drain --dry-run``
        asks what an empty one would mean)."""
        dsw = self._dsw if desired is None else desired
        if volume_ids is None:
            volume_ids = dsw.volume_ids() | self._asw.volume_ids()
        ids = sorted(volume_ids)
        ready = self._ready_to_unmount()
        actions: list[Action] = []
        # 1. pod views that are no longer desired (copies only of those)
        if ready:
            for vid, uid in self._asw.mounted_keys(ids):
                if not dsw.pod_exists_in_volume(vid, uid):
                    mv = self._asw.get_mount(vid, uid)
                    if mv is not None:
                        actions.append(self._unmount_volume_action(mv))
        # 2. desired pod views that are not certainly mounted
        for vtm in dsw.volumes_to_mount(ids):
            if self._asw.pod_state(vtm.volume_id, vtm.pod.uid) is not VolumeMountState.MOUNTED:
                actions.append(self._mount_action(vtm))
            elif self._needs_remount(vtm):
                actions.append(self._remount_action(vtm))
        # 3. staged devices no pod uses any more
        if ready:
            for av in self._asw.staged_volumes(ids):
                if not av.pod_uids and not dsw.volume_exists(av.volume_id):
                    actions.append(self._unmount_device_action(av))
        # 4. staged volumes whose filesystem must grow (a claim expanded with
        #    node_expansion_required): online, never unmounting; right after a fresh stage too
        actions.extend(self._expand_actions(dsw, ids))
        return actions

    def _expand_actions(self, dsw, ids: list[str]) -> list[Action]:
        """NodeExpandVolume for every desired, certainly staged volume whose desired spec asks
        for a filesystem size (``VolumeSpec.extra[node_expand_bytes]``) above the size the
        actual state recorded for it (None after a stage: the stage knows no size)."""
        out: list[Action] = []
        wanted: dict[str, VolumeToMount] = {}
        for vtm in dsw.volumes_to_mount(ids):
            if vtm.spec.extra.get(NODE_EXPAND_BYTES):
                wanted.setdefault(vtm.volume_id, vtm)
        if not wanted:
            return out
        for av in self._asw.attached_volumes(sorted(wanted)):
            if not av.device_mountable or av.device_state is not DeviceMountState.MOUNTED:
                continue  # not staged (yet): expanded right after the stage
            target = _expand_target(wanted[av.volume_id].spec)
            have = self._asw.size_bytes(av.volume_id)
            if target is None or (have is not None and have >= target):
                continue
            out.append(Action(EXPAND_VOLUME, av.volume_id, None, None, wanted[av.volume_id].outer_name,
                              av.plugin_name, f"expand {av.device_mount_path or av.volume_id} to {target} bytes "
                              f"online (NodeExpandVolume; recorded size {have if have is not None else 'unknown'})"))
        return out

    def plan(self, desired=None) -> list[Action]:
        """What a full pass would start now, each marked with what holds it back, if anything
        (against ``desired`` instead of the desired state, when given)."""
        return [self._annotate(a) for a in self.decide(None, desired)]

    def _annotate(self, a: Action) -> Action:
        key = OperationKey(a.volume_id, a.pod_uid)
        running = self._executor.pending_operation(a.volume_id, a.pod_uid)
        if running is not None:
            return replace(a, blocked_by=f"in progress: {running}")
        remaining = self._executor.backoff_remaining(key)
        if remaining > 0:
            return replace(a, blocked_by=f"backoff: retry in {remaining:.1f}s")
        return a

    def _mount_action(self, vtm: VolumeToMount) -> Action:
        return Action(
            MOUNT_VOLUME,
            vtm.volume_id,
            vtm.operation_pod_uid,
            vtm.pod.key,
            vtm.outer_name,
            vtm.plugin_name,
            ("stage and " if vtm.device_mountable and self._asw.device_state(vtm.volume_id) is not DeviceMountState.MOUNTED else "")
            + f"mount {vtm.outer_name} for pod {vtm.pod.key}",
        )

    def _needs_remount(self, vtm: VolumeToMount) -> bool:
        """Whether the mounted view was set up with other content than desired now."""
        want = vtm.spec.content_generation
        return want is not None and self._asw.content_generation(vtm.volume_id, vtm.pod.uid) != want

    def _remount_action(self, vtm: VolumeToMount) -> Action:
        return Action(
            REMOUNT_VOLUME, vtm.volume_id, vtm.operation_pod_uid, vtm.pod.key, vtm.outer_name, vtm.plugin_name,
            f"update {vtm.outer_name} for pod {vtm.pod.key} (its content changed)",
        )

    def _unmount_volume_action(self, mv: MountedVolume) -> Action:
        return Action(
            UNMOUNT_VOLUME, mv.volume_id, mv.pod.uid, mv.pod.key, mv.outer_name, mv.plugin_name,
            f"unmount {mv.mount_path}" + (" (uncertain)" if mv.state is VolumeMountState.UNCERTAIN else ""),
        )

    def _unmount_device_action(self, av: AttachedVolume) -> Action:
        return Action(
            UNMOUNT_DEVICE, av.volume_id, None, None, None, av.plugin_name,
            f"unstage {av.device_mount_path or av.volume_id}"
            + (" (uncertain)" if av.device_state is DeviceMountState.UNCERTAIN else ""),
        )

    def _batch_target(self, action: Action) -> tuple | None:
        """What a batchable action works on now (the generator's ``batchable``: quick-lane
        pod views), or None: the action runs alone (or not at all, see ``_generate``)."""
        if action.kind in (MOUNT_VOLUME, REMOUNT_VOLUME):
            target = self._mount_target(action)
            vtm = target[0] if target is not None else None
            if vtm is None or not self._generator.batchable(action.plugin_name, vtm.spec, vtm.device_mountable,
                                                            vtm.fs_group):
                return None
            return target
        if action.kind == UNMOUNT_VOLUME:
            mv = self._asw.get_mount(action.volume_id, action.pod_uid or "")
            if mv is None or not self._generator.batchable(mv.plugin_name, mv.spec, mv.device_mount_path is not None):
                return None
            return (mv,)
        return None

    def _start_batch(self, batch: list[tuple[Action, tuple]]) -> list[Action]:
        """Start consecutive actions of one kind and plugin as one work item (issue 16): one
        hand-off to a worker, one journal write, one actual-state publication and one wake-up
        of this loop for all of them, each volume still under its own key."""
        first = batch[0][0]
        keys = [OperationKey(a.volume_id, a.pod_uid) for a, _ in batch]
        if first.kind == UNMOUNT_VOLUME:
            op = self._generator.unmount_volumes([(key, t[0]) for key, (_, t) in zip(keys, batch)])
        else:
            op = self._generator.mount_volumes([(key, *t) for key, (_, t) in zip(keys, batch)])
        items = [BatchItem(key, op.name, a.plugin_name) for key, (a, _) in zip(keys, batch)]
        try:
            refused = self._executor.run_batch(items, op.fn, op.lane)
        except AlreadyPendingError:
            return []  # shutting down
        started = []
        for key, (action, _) in zip(keys, batch):
            refusal = refused.get(key)
            if refusal is None:
                started.append(action)
            elif isinstance(refusal, BackoffError):
                self._schedule(refusal.retry_in + 0.001, action.volume_id)
        return started

    def _mount_target(self, action: Action) -> tuple | None:
        """(vtm, device state, pod state) of a mount or remount action as things are now, or
        None when there is nothing (left) to do."""
        vid = action.volume_id
        # Re-read the desired entry: the action is only a description.
        for vtm in self._dsw.volumes_to_mount([vid]):
            if vtm.pod.key == action.pod and vtm.outer_name == action.outer_name:
                pod_state = self._asw.pod_state(vid, vtm.pod.uid)
                if pod_state is VolumeMountState.MOUNTED and not self._needs_remount(vtm):
                    # An operation that was in flight when the pass decided has finished
                    # since: starting another would only repeat its work.
                    return None
                return vtm, self._asw.device_state(vid), pod_state
        return None

    def _start(self, action: Action) -> bool:
        """Start the action's operation; the executor refuses it while a conflicting one runs."""
        key = OperationKey(action.volume_id, action.pod_uid)
        op = self._generate(action)
        if op is None:
            return False
        try:
            self._executor.run(key, op.name, op.fn, plugin=action.plugin_name, lane=op.lane)
        except AlreadyPendingError:
            return False
        except BackoffError as e:
            self._schedule(e.retry_in + 0.001, action.volume_id)
            return False
        return True

    def _generate(self, action: Action):
        vid = action.volume_id
        if action.kind in (MOUNT_VOLUME, REMOUNT_VOLUME):
            target = self._mount_target(action)
            return self._generator.mount_volume(*target) if target is not None else None
        if action.kind == UNMOUNT_VOLUME:
            mv = self._asw.get_mount(vid, action.pod_uid or "")
            return self._generator.unmount_volume(mv) if mv is not None else None
        if action.kind == UNMOUNT_DEVICE:
            av = self._asw.get_volume(vid)
            return self._generator.unmount_device(av) if av is not None else None
        if action.kind == EXPAND_VOLUME:
            av = self._asw.get_volume(vid)
            vtm = next(iter(self._dsw.volumes_to_mount([vid])), None)
            target = _expand_target(vtm.spec) if vtm is not None else None
            if av is None or target is None or av.device_state is not DeviceMountState.MOUNTED:
                return None
            have = self._asw.size_bytes(vid)
            if have is not None and have >= target:
                return None  # done since the pass decided
            return self._generator.expand_volume(av, vtm.spec, target)
        raise ValueError(f"unknown action {action.kind}")


# VolumeSpec.extra key of the filesystem size a node expansion must reach (the populator
# copies it from the PV's volumemanager.io/node-expand-bytes annotation).
NODE_EXPAND_BYTES = "node_expand_bytes"


def _expand_target(spec) -> int | None:
    value = spec.extra.get(NODE_EXPAND_BYTES) if spec.extra else None
    return int(value) if value and str(value).isdigit() else None


def _device_number(path: str | None, major: int | None, minor: int | None) -> tuple[int, int] | None:
    """(major, minor) as given, or of the device node at ``path`` (one stat, following
    symlinks such as /dev/disk/by-id/...); None when neither is known."""
    if major is not None and minor is not None:
        return major, minor
    if not path:
        return None
    try:
        rdev = os.stat(path).st_rdev
    except OSError:
        return None
    return os.major(rdev), os.minor(rdev)


def _same_batch(a: Action, b: Action) -> bool:
    """Whether two actions may share a work item: the same operation (a remount is a mount)
    of the same plugin."""
    kind = {REMOUNT_VOLUME: MOUNT_VOLUME}
    return kind.get(a.kind, a.kind) == kind.get(b.kind, b.kind) and a.plugin_name == b.plugin_name
