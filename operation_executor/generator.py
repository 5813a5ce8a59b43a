"""Builds the operations the reconciler starts, from the plugin interface.

Each generated operation is a closure that calls the plugin, journals its intent, and writes
its result only through ``ActualStateUpdater``. The state rules are the kubelet's, made a
little more conservative: a step that may have happened is recorded as *uncertain* (possibly
mounted), so cleanup still runs; a final failure never downgrades an uncertain state, because
the reverse calls are idempotent and an extra one is cheaper than a leaked mount.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Callable, ContextManager, Mapping, Sequence

from operation_executor.executor import DEFAULT_LANE, QUICK_LANE, BatchFn, BatchItem, OperationKey
from operation_executor.errors import FinalError, OperationError, TransientError, UncertainError, is_uncertain
from operation_executor.journal import IntentJournal, IntentsRefused, JournalStep, NullJournal
from operation_executor.plugin import FS_GROUP_MOUNT_GROUP, PluginRegistry, VolumePlugin
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import (BLOCK, AttachedVolume, FsGroupResult, MarkDeviceOpts, MarkVolumeOpts,
                                      MountedVolume, VolumeSpec, VolumeToMount)
from operation_executor.updater import ActualStateUpdater
from operation_executor.use_guard import VolumeUseGuard

log = logging.getLogger(__name__)

MOUNT_VOLUME = "mount_volume"
UNMOUNT_VOLUME = "unmount_volume"
UNMOUNT_DEVICE = "unmount_device"
EXPAND_VOLUME = "expand_volume"

# The fsGroup walk of one set-up stops after this long (the root is then left unchanged, so
# the retry walks again and, as only wrong entries are changed, carries on where it stopped):
# a huge volume costs a mount error with backoff, never a worker held for hours.
FS_GROUP_WALK_TIMEOUT_SECONDS = 600.0
SET_VOLUME_OWNERSHIP = "SetVolumeOwnership"  # how status names the fsGroup step of a mount


@dataclass(frozen=True)
class GeneratedOperation:
    name: str
    fn: Callable[[], None]
    lane: str = DEFAULT_LANE  # the executor lane that runs it (VolumePlugin.operation_lane)


def as_operation_error(err: BaseException, step: str) -> OperationError:
    """Wrap an unclassified exception as uncertain: we cannot know what it left behind."""
    if isinstance(err, OperationError):
        return err
    return UncertainError(f"{step} failed unexpectedly: {type(err).__name__}: {err}", code="UNEXPECTED")


def outcome_word(err: BaseException | None) -> str:
    if err is None:
        return "ok"
    if isinstance(err, TransientError):
        return "transient"
    if isinstance(err, FinalError):
        return "final"
    return "uncertain"


def journaled(journal: IntentJournal, step: str, key: str, pod_uid: str | None, details: Mapping[str, Any],
              fn: Callable[[], Any], *, durable: bool = True, required: bool = True) -> Any:
    """Run ``fn`` between the intent to do ``step`` and its outcome (Mesos' checkpointed
    intents): the begin record goes out (fsync'd when ``durable``) before ``fn`` starts, the
    end with the outcome after. ``required=False`` (teardown) lets the step run when its intent
    cannot be recorded; a required one that cannot be recorded raises the journal's
    TransientError before ``fn`` starts."""
    token = journal.begin(step, key, pod_uid, dict(details), durable=durable, required=required)
    try:
        result = fn()
    except BaseException as e:
        journal.end(token, outcome_word(e))
        raise
    journal.end(token, "ok")
    return result


@dataclass(frozen=True)
class GeneratedBatch:
    """Many operations of one kind as one work item (``OperationExecutor.run_batch``)."""

    name: str
    fn: BatchFn
    lane: str = DEFAULT_LANE


class _Intent:
    """A step's intent recorded ahead with its batch's (``begin_many``): ``run`` does the step
    and records its outcome; a step that never ran is closed by ``close_unused``. With
    ``error`` (the journal refused the batch) the step does not run and raises it."""

    def __init__(self, journal: IntentJournal, token: object, error: BaseException | None = None) -> None:
        self._journal = journal
        self._token = token
        self._error = error
        self._used = False

    def run(self, fn: Callable[[], Any]) -> Any:
        self._used = True
        if self._error is not None:
            raise self._error
        try:
            result = fn()
        except BaseException as e:
            self._journal.end(self._token, outcome_word(e))
            raise
        self._journal.end(self._token, "ok")
        return result

    def close_unused(self) -> None:
        if not self._used and self._error is None:
            self._used = True
            self._journal.end(self._token, "transient")  # failed before the step: it never ran


class _DeferredUpdates:
    """An ActualStateUpdater that keeps its calls, to replay them into the real one inside
    one ``batch()`` when the whole batch has run: the same calls in the same order, one
    publication. The executor holds every key of the batch until then, so nobody acts on a
    volume whose update is still queued here."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, tuple[Any, ...]]] = []

    def replay(self, asw: ActualStateUpdater) -> None:
        for name, args in self._calls:
            getattr(asw, name)(*args)

    def mark_device_mounted(self, opts: MarkDeviceOpts) -> None:
        self._calls.append(("mark_device_mounted", (opts,)))

    def mark_device_uncertain(self, opts: MarkDeviceOpts) -> None:
        self._calls.append(("mark_device_uncertain", (opts,)))

    def mark_device_unmounted(self, volume_id: str) -> None:
        self._calls.append(("mark_device_unmounted", (volume_id,)))

    def mark_volume_mounted(self, opts: MarkVolumeOpts) -> None:
        self._calls.append(("mark_volume_mounted", (opts,)))

    def mark_volume_uncertain(self, opts: MarkVolumeOpts) -> None:
        self._calls.append(("mark_volume_uncertain", (opts,)))

    def mark_volume_unmounted(self, volume_id: str, pod_uid: str) -> None:
        self._calls.append(("mark_volume_unmounted", (volume_id, pod_uid)))

    def mark_volume_size(self, volume_id: str, size_bytes: int) -> None:
        self._calls.append(("mark_volume_size", (volume_id, size_bytes)))

    def mark_fs_group(self, volume_id: str, pod_uid: str, result: FsGroupResult) -> None:
        self._calls.append(("mark_fs_group", (volume_id, pod_uid, result)))

    def record_result(self, volume_id: str, pod_uid: str | None, operation: str, error: OperationError | None) -> None:
        self._calls.append(("record_result", (volume_id, pod_uid, operation, error)))

    def batch(self) -> ContextManager[None]:
        return nullcontext()


class OperationGenerator:
    def __init__(
        self,
        plugins: PluginRegistry,
        updater: ActualStateUpdater,
        journal: IntentJournal | None = None,
        on_fs_group: Callable[[str, FsGroupResult], None] | None = None,
        use_guard: VolumeUseGuard | None = None,
    ) -> None:
        self._plugins = plugins
        self._asw = updater
        self._journal = journal or NullJournal()
        # Shared with the controller's DeleteVolume: never both on one volume at once.
        self._use_guard = use_guard or VolumeUseGuard()
        # Told (plugin name, result) after each fsGroup application: the daemon's metrics.
        self._on_fs_group = on_fs_group

    def _lane(self, plugin_name: str, spec: VolumeSpec) -> str:
        try:
            return self._plugins.find(plugin_name).operation_lane(spec)
        except KeyError:
            return DEFAULT_LANE  # the operation itself reports the missing plugin

    def _step(
        self,
        step: str,
        volume_id: str,
        pod_uid: str | None,
        details: dict,
        fn: Callable[[], object],
        durable: bool = True,
        required: bool = True,
    ):
        """Journal ``step`` around ``fn`` (see ``journaled``)."""
        return journaled(self._journal, step, volume_id, pod_uid, details, fn, durable=durable, required=required)

    # --- mount ----------------------------------------------------------------------------

    def mount_volume(
        self, vtm: VolumeToMount, device_state: DeviceMountState, pod_state: VolumeMountState
    ) -> GeneratedOperation:
        """Wait for the device, stage it when not certainly staged, then set up the pod's view."""

        def run() -> None:
            # The volume is in use from before its stage to after its pod's view: a DeleteVolume
            # decided meanwhile from an older look at the node waits (see use_guard).
            with self._use_guard.using(vtm.spec.pv_name):
                self._mount_body(vtm, device_state, pod_state, self._asw, None)

        return GeneratedOperation(MOUNT_VOLUME, run, self._lane(vtm.plugin_name, vtm.spec))

    def _mount_body(self, vtm: VolumeToMount, device_state: DeviceMountState, pod_state: VolumeMountState,
                    asw: ActualStateUpdater, set_up_intent: _Intent | None) -> None:
        """The mount operation of one volume; ``set_up_intent``: its SetUp intent, already
        recorded with its batch's (None: recorded here, around the call)."""
        plugin = self._plugins.find(vtm.plugin_name)
        spec, pod = vtm.spec, vtm.pod
        # The plugin's calls see the pod's fsGroup (a driver may apply it itself).
        call_spec = spec if vtm.fs_group is None else replace(spec, fs_group=vtm.fs_group)
        device_mount_path: str | None = None
        try:
            if vtm.device_mountable:
                device_path = plugin.wait_for_device(spec)
                device_mount_path = plugin.device_mount_path(spec)
                if device_mount_path is None:
                    raise FinalError(f"plugin {plugin.name} gave no device mount path", code="PLUGIN_ERROR")
                if device_state is not DeviceMountState.MOUNTED:
                    try:
                        self._step(
                            "mount_device",
                            vtm.volume_id,
                            None,
                            {"device_path": device_path, "device_mount_path": device_mount_path},
                            lambda: plugin.mount_device(call_spec, device_path, device_mount_path),
                            durable=plugin.durable_intents,
                        )
                    except BaseException as e:
                        if is_uncertain(e) or device_state is DeviceMountState.UNCERTAIN:
                            asw.mark_device_uncertain(MarkDeviceOpts(
                                vtm.volume_id, spec, vtm.plugin_name, device_path, device_mount_path
                            ))
                        raise
                    asw.mark_device_mounted(MarkDeviceOpts(vtm.volume_id, spec, vtm.plugin_name, device_path,
                                                           device_mount_path))
        except BaseException as e:
            err = as_operation_error(e, "MountDevice")
            asw.record_result(vtm.volume_id, None, "MountDevice", err)
            raise err from (None if err is e else e)
        if vtm.device_mountable:
            asw.record_result(vtm.volume_id, None, "MountDevice", None)

        mount_path = plugin.mount_path(spec, pod, vtm.outer_name)
        try:
            if set_up_intent is not None:
                set_up_intent.run(lambda: plugin.set_up(call_spec, pod, vtm.outer_name, device_mount_path))
            else:
                self._step(
                    "set_up",
                    vtm.volume_id,
                    pod.uid,
                    {"mount_path": mount_path, "device_mount_path": device_mount_path},
                    lambda: plugin.set_up(call_spec, pod, vtm.outer_name, device_mount_path),
                    durable=plugin.durable_intents,
                )
        except BaseException as e:
            err = as_operation_error(e, "SetUp")
            if is_uncertain(err) or pod_state is VolumeMountState.UNCERTAIN:
                asw.mark_volume_uncertain(MarkVolumeOpts(
                    vtm.volume_id, pod, vtm.outer_name, spec, vtm.plugin_name, mount_path, vtm.device_mountable
                ))
            asw.record_result(vtm.volume_id, pod.uid, "SetUp", err)
            raise err from (None if err is e else e)
        fs_group: FsGroupResult | None = None
        if vtm.fs_group is not None:
            try:
                fs_group = self._apply_fs_group(plugin, vtm, call_spec, mount_path)
            except BaseException as e:
                # The view is set up but the pod cannot use it yet (the kubelet's
                # "applyFSGroup failed"): possibly mounted, so it is retried while desired
                # and torn down when not.
                err = as_operation_error(e, SET_VOLUME_OWNERSHIP)
                asw.mark_volume_uncertain(MarkVolumeOpts(
                    vtm.volume_id, pod, vtm.outer_name, spec, vtm.plugin_name, mount_path, vtm.device_mountable
                ))
                asw.record_result(vtm.volume_id, pod.uid, SET_VOLUME_OWNERSHIP, err)
                raise err from (None if err is e else e)
        asw.mark_volume_mounted(MarkVolumeOpts(
            vtm.volume_id, pod, vtm.outer_name, spec, vtm.plugin_name, mount_path, vtm.device_mountable
        ))
        if fs_group is not None:
            asw.mark_fs_group(vtm.volume_id, pod.uid, fs_group)
        asw.record_result(vtm.volume_id, pod.uid, "SetUp", None)

    def _apply_fs_group(self, plugin: VolumePlugin, vtm: VolumeToMount, spec: VolumeSpec,
                        mount_path: str) -> FsGroupResult:
        """Give the pod's view its fsGroup after SetUp, as the plugin says (``fs_group_mode``):
        a bounded walk of the tree (one stat with OnRootMismatch when the root is right), or
        nothing when the driver applied it, the plugin takes none, or the volume is read-only
        (never walked). Raises a typed error naming the paths when the walk is incomplete."""
        from mount_utils.ownership import ALWAYS, OwnershipError, set_volume_ownership

        gid = int(vtm.fs_group)  # type: ignore[arg-type]  # checked by the caller
        policy = vtm.fs_group_change_policy or ALWAYS
        mode = None if spec.volume_mode == BLOCK else plugin.fs_group_mode(spec)
        result = FsGroupResult(gid, policy, mode=mode)
        if spec.volume_mode == BLOCK:
            result = replace(result, skipped_reason="block volume: no filesystem to walk")
        elif mode is None:
            result = replace(result, skipped_reason=plugin.fs_group_skip_reason(spec))
        elif mode == FS_GROUP_MOUNT_GROUP:
            result = replace(result, skipped_reason="applied by the driver (volume_mount_group): no walk")
        elif spec.read_only:
            result = replace(result, skipped_reason="read-only volume: never walked")
        else:
            def walk():
                try:
                    res = set_volume_ownership(mount_path, gid, policy, read_only=plugin.fs_group_read_only_bits,
                                               workers=plugin.fs_group_walk_workers,
                                               timeout=FS_GROUP_WALK_TIMEOUT_SECONDS)
                except OwnershipError as e:
                    raise UncertainError(f"setting fsGroup {gid} on {mount_path}: {e.filename}: {e.strerror}",
                                         code="FSGROUP_FAILED") from None
                except ValueError as e:
                    raise FinalError(f"setting fsGroup on {mount_path}: {e}", code="BAD_SPEC") from None
                if not res.complete:
                    try:
                        res.raise_for_failures()
                    except Exception as e:  # OwnershipIncompleteError: its message names the paths
                        raise UncertainError(str(e), code="FSGROUP_FAILED") from None
                return res

            res = self._step(
                "set_volume_ownership",
                vtm.volume_id,
                vtm.pod.uid,
                {"mount_path": mount_path, "fs_group": gid, "policy": policy},
                walk,
                durable=False,  # it only changes ownership bits: redone by the next set-up anyway
            )
            result = replace(result, seconds=res.seconds, files_changed=res.changed_entries, files=res.files,
                             dirs=res.dirs, skipped_reason=res.skipped_reason)
            if res.changed_entries:
                log.info("fsGroup %d (%s) on %s: %d of %d entries changed in %.2f s", gid, policy, mount_path,
                         res.changed_entries, res.files + res.dirs, res.seconds,
                         extra={"pod": vtm.pod.key, "volume": vtm.outer_name})
        if self._on_fs_group is not None:
            try:
                self._on_fs_group(vtm.plugin_name, result)
            except Exception:  # metrics never fail a mount
                log.exception("fsGroup observer failed")
        return result

    # --- unmount --------------------------------------------------------------------------

    def unmount_volume(self, mv: MountedVolume) -> GeneratedOperation:
        """Tear down one pod's view. On any failure the pod mount stays possibly mounted."""

        def run() -> None:
            self._unmount_body(mv, self._asw, None)

        return GeneratedOperation(UNMOUNT_VOLUME, run, self._lane(mv.plugin_name, mv.spec))

    def _unmount_body(self, mv: MountedVolume, asw: ActualStateUpdater, intent: _Intent | None) -> None:
        plugin = self._plugins.find(mv.plugin_name)
        try:
            if intent is not None:
                intent.run(lambda: plugin.tear_down(mv.spec, mv.pod, mv.outer_name, mv.mount_path))
            else:
                self._step(
                    "tear_down",
                    mv.volume_id,
                    mv.pod.uid,
                    {"mount_path": mv.mount_path},
                    lambda: plugin.tear_down(mv.spec, mv.pod, mv.outer_name, mv.mount_path),
                    durable=plugin.durable_intents,
                    required=False,  # teardown frees space: it never waits for the journal
                )
        except BaseException as e:
            err = as_operation_error(e, "TearDown")
            asw.mark_volume_uncertain(MarkVolumeOpts(
                mv.volume_id,
                mv.pod,
                mv.outer_name,
                mv.spec,
                mv.plugin_name,
                mv.mount_path,
                mv.device_mount_path is not None,
            ))
            asw.record_result(mv.volume_id, mv.pod.uid, "TearDown", err)
            raise err from (None if err is e else e)
        asw.mark_volume_unmounted(mv.volume_id, mv.pod.uid)
        asw.record_result(mv.volume_id, mv.pod.uid, "TearDown", None)

    # --- batches (issue 16) -----------------------------------------------------------------

    def batchable(self, plugin_name: str, spec: VolumeSpec, device_mountable: bool,
                  fs_group: int | None = None) -> bool:
        """Whether a pod-view operation of this volume may run in a batch: the quick lane's
        plugins only (a few local syscalls that never wait: VolumePlugin.operation_lane), never
        a stage and never a set-up with an fsGroup (its walk of the volume's tree may take
        long), so that one slow volume cannot hold up the others of its batch."""
        return not device_mountable and fs_group is None and self._lane(plugin_name, spec) == QUICK_LANE

    def mount_volumes(self, entries: Sequence[tuple[OperationKey, VolumeToMount, DeviceMountState,
                                                     VolumeMountState]]) -> GeneratedBatch:
        """The mount operation of many batchable volumes (``batchable``) as one work item:
        their SetUp intents in one journal write before the first call, the calls one after
        another, and their actual-state updates published as one change at the end. Each
        volume keeps its own result (its error, its backoff, its line in ``status``)."""
        by_key = {key: (vtm, ds, ps) for key, vtm, ds, ps in entries}

        def intent(key: OperationKey) -> JournalStep | None:
            vtm = by_key[key][0]
            try:
                path = self._plugins.find(vtm.plugin_name).mount_path(vtm.spec, vtm.pod, vtm.outer_name)
            except Exception:  # noqa: BLE001 - the operation itself reports it
                return None
            return JournalStep("set_up", vtm.volume_id, vtm.pod.uid, {"mount_path": path, "device_mount_path": None})

        def one(key: OperationKey, asw: ActualStateUpdater, pre: _Intent | None) -> None:
            vtm, ds, ps = by_key[key]
            with self._use_guard.using(vtm.spec.pv_name):
                self._mount_body(vtm, ds, ps, asw, pre)

        lane = self._lane(entries[0][1].plugin_name, entries[0][1].spec) if entries else DEFAULT_LANE
        plugins = {vtm.plugin_name for _, vtm, _, _ in entries}
        return GeneratedBatch(MOUNT_VOLUME, lambda items: self._run_batch(items, intent, one, plugins, True), lane)

    def unmount_volumes(self, entries: Sequence[tuple[OperationKey, MountedVolume]]) -> GeneratedBatch:
        """``unmount_volume`` of many batchable pod views as one work item (see mount_volumes)."""
        by_key = dict(entries)

        def intent(key: OperationKey) -> JournalStep:
            mv = by_key[key]
            return JournalStep("tear_down", mv.volume_id, mv.pod.uid, {"mount_path": mv.mount_path})

        def one(key: OperationKey, asw: ActualStateUpdater, pre: _Intent | None) -> None:
            self._unmount_body(by_key[key], asw, pre)

        lane = self._lane(entries[0][1].plugin_name, entries[0][1].spec) if entries else DEFAULT_LANE
        plugins = {mv.plugin_name for _, mv in entries}
        # Teardown frees space: it never waits for the journal (required=False).
        return GeneratedBatch(UNMOUNT_VOLUME, lambda items: self._run_batch(items, intent, one, plugins, False), lane)

    def _run_batch(self, items: Sequence[BatchItem], intent: Callable[[OperationKey], JournalStep | None],
                   one: Callable[[OperationKey, ActualStateUpdater, _Intent | None], None], plugins: set[str],
                   required: bool) -> dict[OperationKey, tuple[BaseException | None, float]]:
        durable = False
        for name in plugins:
            try:
                durable = durable or self._plugins.find(name).durable_intents
            except KeyError:
                pass
        steps = [(item.key, intent(item.key)) for item in items]
        recorded = [(key, st) for key, st in steps if st is not None]
        intents: dict[OperationKey, _Intent] = {}
        try:
            tokens = self._journal.begin_many([st for _, st in recorded], durable=durable, required=required)
            for (key, _), token in zip(recorded, tokens):
                intents[key] = _Intent(self._journal, token)
        except IntentsRefused as e:  # the journal refused them all (a full disk): none starts
            for (key, _), err in zip(recorded, e.per_step):
                intents[key] = _Intent(self._journal, None, err)
        except OperationError as e:
            for key, _ in recorded:
                intents[key] = _Intent(self._journal, None, e)
        deferred = _DeferredUpdates()
        results: dict[OperationKey, tuple[BaseException | None, float]] = {}
        for item in items:
            pre = intents.get(item.key)
            started = time.monotonic()
            error: BaseException | None = None
            try:
                one(item.key, deferred, pre)
            except BaseException as e:  # noqa: BLE001 - one volume's failure is its own
                error = e
            if pre is not None:
                pre.close_unused()
            results[item.key] = (error, time.monotonic() - started)
        with self._asw.batch():
            deferred.replay(self._asw)
        return results

    def unmount_device(self, av: AttachedVolume) -> GeneratedOperation:
        """Unstage a volume no pod uses. On any failure the device stays possibly mounted,
        so the next pod gets a fresh MountDevice and the next cleanup tries again."""

        def run() -> None:
            plugin = self._plugins.find(av.plugin_name)
            path = av.device_mount_path
            if path is None:
                path = plugin.device_mount_path(av.spec)
            try:
                if path is not None:
                    self._step(
                        "unmount_device",
                        av.volume_id,
                        None,
                        {"device_mount_path": path, "device_path": av.device_path},
                        lambda: plugin.unmount_device(av.spec, path),
                        durable=plugin.durable_intents,
                        required=False,  # teardown frees space: it never waits for the journal
                    )
            except BaseException as e:
                err = as_operation_error(e, "UnmountDevice")
                self._asw.mark_device_uncertain(MarkDeviceOpts(av.volume_id, av.spec, av.plugin_name, av.device_path,
                                                               path or ""))
                self._asw.record_result(av.volume_id, None, "UnmountDevice", err)
                raise err from (None if err is e else e)
            self._asw.mark_device_unmounted(av.volume_id)
            self._asw.record_result(av.volume_id, None, "UnmountDevice", None)

        return GeneratedOperation(UNMOUNT_DEVICE, run, self._lane(av.plugin_name, av.spec))

    def expand_volume(self, av: AttachedVolume, spec: VolumeSpec | None = None,
                      target_bytes: int | None = None) -> GeneratedOperation:
        """Grow a staged volume's filesystem to its device's size (online expansion).

        ``spec``/``target_bytes``: an expansion the reconciler decided (the desired spec says
        the filesystem must reach ``target_bytes``); the plugin gets the desired spec, and a
        plugin that cannot expand is an error (else the same expansion would be decided again
        and again)."""
        use = spec if spec is not None else av.spec

        def run() -> None:
            plugin = self._plugins.find(av.plugin_name)
            try:
                size = self._step(
                    "expand",
                    av.volume_id,
                    None,
                    {"device_path": av.device_path, "device_mount_path": av.device_mount_path,
                     "target_bytes": target_bytes},
                    lambda: plugin.expand(use, av.device_path, av.device_mount_path),
                    durable=plugin.durable_intents,
                )
                if size is None and target_bytes is not None:
                    raise FinalError(f"{plugin.display_name} cannot expand volume {av.volume_id} on the node "
                                     f"(to {target_bytes} bytes)", code="NODE_EXPANSION_NOT_SUPPORTED")
                if size is not None and target_bytes is not None:
                    size = max(int(size), target_bytes)  # succeeded: the driver may not say the size
            except BaseException as e:
                # A failed resize leaves the filesystem as it was, still mounted: record why.
                err = as_operation_error(e, "Expand")
                self._asw.record_result(av.volume_id, None, "Expand", err)
                raise err from (None if err is e else e)
            if size is not None:
                self._asw.mark_volume_size(av.volume_id, int(size))
            self._asw.record_result(av.volume_id, None, "Expand", None)

        return GeneratedOperation(EXPAND_VOLUME, run, self._lane(av.plugin_name, av.spec))
