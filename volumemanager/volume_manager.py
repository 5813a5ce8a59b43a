"""Wires the volume manager together: source -> populator -> DSW; reconciler -> executor ->
plugins -> ASW; plus device and driver events that wake the volumes waiting for them.

The public surface is what the daemon and the admin API need: ``start``/``stop``,
``status``, ``explain``, ``plan`` and ``wait_for_mount``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from mount_utils.mounter import LinuxMounter
from operation_executor.errors import WaitingError, is_uncertain
from operation_executor.executor import OperationExecutor, OperationOutcome
from operation_executor.generator import UNMOUNT_DEVICE, UNMOUNT_VOLUME, OperationGenerator, outcome_word
from operation_executor.journal import IntentJournal
from operation_executor.use_guard import VolumeUseGuard
from volumemanager import status as st
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredStateOfWorld
from volumemanager.config import DaemonConfig
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins
from volumemanager.populator import DesiredStatePopulator
from volumemanager.reconciler import Reconciler

log = logging.getLogger(__name__)


class NoSuchPod(LookupError):
    pass


def _csi_client_factory(timeout: float):
    """A CSI client maker that imports gRPC on the first call, not at start-up."""

    def make(endpoint: str):
        from volumemanager.csi.client import CSINodeClient

        return CSINodeClient(endpoint, timeout=timeout)

    return make


class VolumeManager:
    def __init__(
        self,
        config: DaemonConfig,
        source,
        mounter=None,
        journal: IntentJournal | None = None,
        metrics=None,
        watch_devices: bool = True,
        watch_plugins: bool = True,
    ) -> None:
        from volumemanager.csi.registry import DriverRegistry

        self.config = config
        self.mounter = mounter or LinuxMounter()
        self.host = DaemonPluginHost(config.root_dir, config.node_name, self.mounter)
        self.drivers = DriverRegistry(client_factory=_csi_client_factory(float(config.csi_timeout)))
        self._setup_controller_clients(config, metrics)
        from volumemanager.plugins.flexvolume_driver import DEFAULT_PLUGIN_DIR as DEFAULT_VOLUME_PLUGIN_DIR
        from volumemanager.plugins.flexvolume_driver import FlexProber

        # FlexVolume drivers, probed in --volume-plugin-dir without restarts (started with the CSI drivers).
        self.flex = FlexProber(getattr(config, "volume_plugin_dir", DEFAULT_VOLUME_PLUGIN_DIR),
                               on_change=self._flex_drivers_changed)
        self._flex_resolving = False
        self.plugins = build_plugins(self.host, self.drivers, csi_fs_group_policy=self._csi_fs_group_policy, flex_drivers=self.flex,
                                     csi_publish_context=self._csi_publish_context)
        self.dsw = DesiredStateOfWorld()
        self.asw = ActualStateOfWorld()
        self.executor = OperationExecutor()
        if journal is None:
            import os

            from volumemanager.intent_journal import FileIntentJournal

            journal = FileIntentJournal(os.path.join(config.root_dir, "state"))
        self.journal = journal
        from volumemanager.controller.overlay import ProvisionedOverlaySource
        from volumemanager.controller.records import ProvisionedVolumes

        # Provisioned PVs (issue 14) join the desired state through this overlay.
        self.provisioned = ProvisionedVolumes(os.path.join(config.root_dir, "state"))
        source = ProvisionedOverlaySource(source, self.provisioned)
        self.use_guard = VolumeUseGuard()  # a DeleteVolume never overlaps a mount operation of its volume
        self.generator = OperationGenerator(self.plugins, self.asw, journal, on_fs_group=self._observe_fs_group,
                                            use_guard=self.use_guard)
        self.populator = DesiredStatePopulator(source, self.dsw, self.plugins, self._volumes_changed,
                                               host_volumes=self._host_pod_volumes,
                                               host_owner=self._host_pod_owner)
        self.populator.on_source_recovered.append(self._source_recovered)
        self.host.set_secret_lookup(self.populator.get_secret)
        self.host.set_configmap_lookup(self.populator.get_configmap)
        from volumemanager.drain import DrainController

        # The reconciler reads the desired state through the drain's view: empty while drained.
        self.drain = DrainController(self.dsw, self.asw, self.executor, self.host.pods_dir,
                                     self._remove_pod_skeleton, operation_label=self.plugins.operation_label)
        self.reconciler = Reconciler(
            self.drain.desired_view, self.asw, self.executor, self.generator, ready_to_unmount=self._ready_to_unmount
        )
        from volumemanager.kube.cluster_node import cluster_node_for

        # API mode (issue 15): VolumeAttachments gate the API's CSI PVs, projected tokens via TokenRequest.
        self.cluster_node = cluster_node_for(source, config.node_name, getattr(config, "kubeconfig", None), self.host,
                                             self.populator.resolve_again, self.reconciler.wake_waiting)
        self.controller = self._build_controller(source)
        self.drain.attach(self.reconciler, self._ready_to_unmount)
        self.executor.add_batch_completion_callback(_log_outcomes)
        # A pod held back because its UID or PV is still in use here is looked at again
        # after every tear-down.
        self.executor.add_batch_completion_callback(self._recheck_held_pods)
        # No skeletons: empty pod directories go after a pod's tear-down, and once at start.
        self.executor.add_batch_completion_callback(self._remove_skeleton_after)
        self._skeletons_swept = False
        self.reconciler.on_pass.append(lambda secs, n: self._sweep_skeletons_once())
        self.metrics = metrics
        if metrics is not None:
            self.executor.add_completion_callback(self._record_metrics)
            self.reconciler.on_pass.append(lambda secs, n: metrics.observe_reconcile(secs))
        self._watch_devices = watch_devices
        self._watch_plugins = watch_plugins
        self._device_source = None
        self._registration = None
        self._mount_watcher = None
        self._thread: threading.Thread | None = None
        self._reconstructed = False
        from volumemanager.pod_owners import PodOwners

        # Which pod each UID under pods/ belongs to, across restarts (one pod per UID).
        self.pod_owners = PodOwners(os.path.join(config.root_dir, "state"))
        self.interrupted_at_start: list[dict] = []
        self.on_tick: Callable[[], None] | None = None
        self.started_at = time.time()

    # --- fsGroup: the CSI plugin's and the generator's narrow hooks ------------------------

    def _csi_fs_group_policy(self, driver: str) -> str | None:
        """The fsGroupPolicy of the driver's CSIDriver object in the desired state, if any."""
        populator = getattr(self, "populator", None)
        obj = populator.snapshot.csi_driver(driver) if populator is not None else None
        return obj.fs_group_policy if obj is not None else None

    def _csi_publish_context(self, driver: str, volume_handle: str, pv_name: str | None) -> dict[str, str]:
        """The CSI plugin's narrow lookup of a PV's attachment (issue 14 attach): its
        publish_context, {} when it needs none; WaitingError until it is attached."""
        cluster = getattr(self, "cluster_node", None)
        if cluster is not None and cluster.attachments.handles(driver, volume_handle, pv_name):
            return cluster.attachments.publish_context(driver, volume_handle, pv_name)  # the cluster attaches
        attach = getattr(self, "attach", None)
        return attach.publish_context(driver, volume_handle, pv_name) if attach is not None else {}

    def _specs_attached_here(self) -> list:
        """The desired volumes the one-host attach controller attaches: not the API server's
        PVs, which the cluster attaches (their VolumeAttachment gates them)."""
        specs = [v.spec for v in self.dsw.persistent_volumes_to_mount()]
        cluster = getattr(self, "cluster_node", None)
        if cluster is None:
            return specs
        handles = cluster.attachments.handles
        return [s for s in specs if not handles(getattr(s.source, "driver", None) or "",
                                                getattr(s.source, "volume_handle", None) or "", s.pv_name)]

    def _attach_not_required(self) -> frozenset[str]:
        """Drivers whose CSIDriver object says ``attachRequired: false``."""
        snap = self.populator.snapshot
        return frozenset(name for name, d in snap.csidrivers.items() if not d.attach_required)

    def _observe_fs_group(self, plugin: str, result) -> None:
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.observe_fs_group(plugin, result.skipped_reason is None and result.mode == "walk", result.seconds)

    # --- lifecycle ------------------------------------------------------------------------

    def _volumes_changed(self, volume_ids: set[str]) -> None:
        self.reconciler.mark_dirty(volume_ids)
        pairs = {(v.pod.uid, v.pod.key) for v in self.dsw.volumes_to_mount(volume_ids)}
        if pairs:
            self.pod_owners.update(pairs, lambda uid: self.dsw.get_pod(uid) is not None
                                   or os.path.isdir(self.host.pod_dir(uid)))

    def _setup_controller_clients(self, config: DaemonConfig, metrics) -> None:
        """Controller-service clients with the --csi-timeout deadline, feeding the sidecars'
        metric; --csi-controller NAME=ENDPOINT overrides where a driver's service is."""
        from volumemanager.csi.registration import parse_static_driver

        for spec in config.csi_controller:
            name, endpoint = parse_static_driver(spec)
            self.drivers.controller_overrides[name] = endpoint
        drivers = self.drivers

        def make(endpoint: str):
            from volumemanager.csi.controller_client import CSIControllerClient

            def observe(method: str, code: str, seconds: float) -> None:
                if metrics is None:
                    return
                name = next((d.name for d in drivers.list() if d.controller_endpoint == endpoint), "")
                metrics.observe_csi_call(name, method, code, seconds)

            return CSIControllerClient(endpoint, timeout=float(config.csi_timeout), observer=observe)

        self.drivers.set_controller_factory(make)

    def _build_controller(self, source):
        from volumemanager.controller.operations import ControllerOperations
        from volumemanager.controller.reconciler import ControllerReconciler

        from volumemanager.controller.attach import AttachController, AttachmentRecords

        ops = ControllerOperations(self.drivers, self.provisioned, self.journal, self.populator.get_secret,
                                   use_guard=self.use_guard, still_used=self._pv_still_used)
        # Attach/detach (ControllerPublish/Unpublish) of the CSI PVs the node wants.
        self.attach = AttachController(
            self.drivers, AttachmentRecords(os.path.join(self.config.root_dir, "state")), self.journal,
            self.populator.get_secret, self._specs_attached_here,
            self._volumes_in_use, self._ready_to_unmount, self._attach_not_required, self.executor)
        self.attach.on_attach_outcome.append(self.reconciler.wake_waiting)
        from volumemanager.controller.snapshot_operations import SnapshotOperations
        from volumemanager.controller.snapshot_records import SnapshotRecords

        # Snapshots we created (the VolumeSnapshotContents), fsync'd under state/snapshots/.
        self.snapshot_records = SnapshotRecords(os.path.join(self.config.root_dir, "state"))
        controller = ControllerReconciler(source, self.provisioned, self.drivers, self.executor, ops,
                                          self._volumes_in_use, self._ready_to_unmount,
                                          lambda: self.populator.sync(), attach=self.attach,
                                          snapshot_records=self.snapshot_records,
                                          snapshot_ops=SnapshotOperations(ops, self.snapshot_records))
        source.on_change_hooks.append(controller.wake)
        return controller

    def _pv_still_used(self, pv_name: str, driver: str, handle: str) -> bool:
        """The controller's last look before a DeleteVolume (under the use guard's lock)."""
        names, handles = self._volumes_in_use()
        return "*" in names or pv_name in names or (driver, handle) in handles

    def _volumes_in_use(self) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        """The controller's narrow view of the node: PV names and (driver, handle) pairs that a
        pod view, a stage (known or on disk) or a desired pod still has. A volume in it is never
        deleted; the name ``*`` means "cannot tell: every volume is in use"."""
        from volumemanager.manifests.models import CSISource

        specs = [mv.spec for mv in self.asw.mounted_volumes()] + [av.spec for av in self.asw.attached_volumes()]
        specs += [v.spec for v in self.dsw.persistent_volumes_to_mount()]  # only these have names/handles
        # Stages on disk too (their record is written before NodeStage starts and removed after
        # NodeUnstage): a stage in flight is not in the actual state yet, and must count.
        for plugin in self.plugins.plugins():
            try:
                specs += [staged.spec for staged in plugin.find_staged_devices()]
            except OSError as e:
                log.warning("cannot list the stages of %s (volumes are kept): %s", plugin.name, e)
                return frozenset({"*"}), frozenset()
        names: set[str] = set()
        handles: set[tuple[str, str]] = set()
        for spec in specs:
            if spec is None:
                continue
            if spec.pv_name:
                names.add(spec.pv_name)
            src = spec.source
            if isinstance(src, CSISource) and src.volume_handle:
                handles.add((src.driver, src.volume_handle))
        return frozenset(names), frozenset(handles)

    def _source_recovered(self) -> None:
        """The desired state was read whole again after a failed read: what was kept meanwhile
        and is not desired is torn down now (say how much), not at the next full pass."""
        if self._reconstructed:
            kept = [mv for mv in self.asw.mounted_volumes()
                    if not self.dsw.pod_exists_in_volume(mv.volume_id, mv.pod.uid)]
            if kept:
                log.info("desired state read whole again: %d volumes of %d pods on the node are not desired; "
                         "tearing them down", len(kept), len({mv.pod.uid for mv in kept}),
                         extra={"volumes": len(kept), "pods": len({mv.pod.uid for mv in kept})})
        self.reconciler.mark_all_dirty()

    def _ready_to_unmount(self) -> bool:
        return self.populator.has_added_pods and self._reconstructed

    def _host_pod_owner(self, uid: str) -> str | None:
        """The pod ("namespace/name") the node has volumes mounted for under ``uid``, from the
        actual state's per-pod index; before the disk has been scanned, from the record."""
        pod = self.asw.pod_of_uid(uid)
        if pod is not None and pod.namespace != "?":
            return pod.key
        if not self._reconstructed:
            return self.pod_owners.owners().get(uid)
        return None

    def _host_pod_volumes(self) -> list:
        """The populator's narrow view of the actual state: which pod (and claim) each mounted
        pod volume belongs to. Volumes found on disk at start without a desired pod have no
        known pod ("?" namespace)."""
        from volumemanager.populator import HostPodVolume

        out = [HostPodVolume(mv.pod.uid, mv.pod.key if mv.pod.namespace != "?" else None,
                             mv.spec.pv_name if mv.spec is not None else None,
                             mv.spec.claim if mv.spec is not None else None)
               for mv in self.asw.mounted_volumes()]
        if not self._reconstructed:
            # Before the disk has been scanned, the record says whose pods/<uid> is there.
            out.extend(HostPodVolume(uid, key) for uid, key in self.pod_owners.owners().items())
        return out

    def _recheck_held_pods(self, outcomes: list[OperationOutcome]) -> None:
        if self.populator.needs_recheck and any(
                o.error is None and o.operation in (UNMOUNT_VOLUME, UNMOUNT_DEVICE) for o in outcomes):
            self.populator.sync(recheck=True)  # once per batch of tear-downs

    def _load_pod_owners(self) -> None:
        """Before the first read: the record of which pod each UID on disk belongs to, for the
        source's duplicate-UID rule and the populator's check (until reconstruction)."""
        self.pod_owners.load()
        self.pod_owners.prune(lambda uid: os.path.isdir(self.host.pod_dir(uid)))
        prefer = getattr(self.populator.source, "prefer_uid_holders", None)
        owners = self.pod_owners.owners()
        if owners and callable(prefer):
            prefer({uid: tuple(key.split("/", 1)) for uid, key in owners.items()})

    def _failed_source_lines(self) -> list[str]:
        """One line per desired-state source that is not read whole (explain shows them)."""
        return [h.describe() for h in self.populator.source_healths() if not h.ok]

    def _remove_skeleton_after(self, outcomes: list[OperationOutcome]) -> None:
        """After successful tear-downs for pods that are not desired: rmdir their empty dirs
        (once per pod of a batch)."""
        uids = {o.key.pod_uid for o in outcomes
                if o.operation == UNMOUNT_VOLUME and o.error is None and o.key.pod_uid}
        for uid in sorted(uids):  # type: ignore[type-var]
            if self.dsw.find_pod(uid) is None:
                self._remove_pod_skeleton(uid)

    def _remove_pod_skeleton(self, uid: str) -> bool:
        from volumemanager.pod_dirs import remove_pod_skeleton

        return remove_pod_skeleton(self.host.pods_dir, uid, self.mounter.is_mount_point, self._pod_view_on_disk)

    def _pod_view_on_disk(self, plugin_dir_name: str, volume_dir: str, block: bool) -> str:
        """Where a plugin keeps a pod's view below its volume dir (pod_dirs asks, per plugin)."""
        from volumemanager.plugin_host import unescape_plugin_name

        try:
            plugin = self.plugins.find(unescape_plugin_name(plugin_dir_name))
        except KeyError:
            return volume_dir
        return plugin.pod_mount_path_on_disk(volume_dir, block)

    def _sweep_skeletons_once(self) -> None:
        """Skeletons an earlier run left: removed after the first pass that may unmount, i.e.
        never before the desired state has been read (a desired pod keeps its dirs)."""
        if self._skeletons_swept or not self._ready_to_unmount():
            return
        self._skeletons_swept = True
        from volumemanager.pod_dirs import sweep_pod_skeletons

        try:
            sweep_pod_skeletons(self.host.pods_dir, lambda uid: self.dsw.find_pod(uid) is not None,
                                self.mounter.is_mount_point, self._pod_view_on_disk)
        except OSError as e:
            log.warning("could not remove empty pod directories: %s", e)

    def _record_metrics(self, outcome: OperationOutcome) -> None:
        result = "success" if outcome.error is None else ("uncertain" if is_uncertain(outcome.error) else "error")
        self.metrics.observe_operation(outcome.operation, outcome.plugin, result, outcome.duration)

    def start(self) -> None:
        """Read the desired state, reconstruct the actual state, run the first pass, then
        start the loop. Returns when the first pass has started its operations."""
        from volumemanager.kube.wiring import start_for

        # Events, volumesInUse and CSINode to the API server, when one is configured (else None).
        self.reporter = start_for(self)
        self._start_drivers()
        self._load_pod_owners()
        self.provisioned.load()
        self.snapshot_records.load()
        self.attach.records.load()
        open_intents = getattr(self.journal, "open_intents", None)
        if callable(open_intents):  # before reconstruction forgets them
            self.controller.adopt_interrupted(open_intents())
        self.populator.start()
        self._flex_resolving = True
        self.reconstruct()
        if self.populator.needs_recheck:
            # Pods held back by the owner record: from now on the actual state decides.
            self.populator.sync(recheck=True)
        self.reconciler.reconcile(None)
        self.controller.start()
        if self._watch_devices:
            self._start_device_events()
        from volumemanager.mount_watcher import MountWatcher

        self._mount_watcher = MountWatcher(self.mounter, self.config.root_dir, self.asw, self.plugins,
                                           self.executor.is_pending, self.reconciler.mark_dirty)
        self._mount_watcher.start()
        self._thread = threading.Thread(target=self.reconciler.run, kwargs={"on_tick": self._tick},
                                        name="vm-reconciler", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()

    def reconstruct(self) -> None:
        from volumemanager import reconstruct as rc

        try:
            found = rc.reconstruct_actual_state(self.host.pods_dir, self.plugins, self.mounter.mount_points(),
                                                self.dsw.volumes_to_mount(), self.asw, self.pod_owners.get)
            interrupted = rc.take_interrupted(self.journal)
            self.interrupted_at_start.extend(interrupted)
            populator = self.populator
            rc.log_reconstruction(
                found, len(interrupted), populator.has_added_pods,
                lambda: "; ".join(h.describe() for h in populator.source_healths() if not h.ok))
        finally:
            self._reconstructed = True

    def _flex_drivers_changed(self, names: set[str]) -> None:
        """A FlexVolume driver came, went or changed: resolve the pods again (whether a volume
        is attachable, hence its id, is the driver's answer), and wake the volumes that wait
        for a driver. Before the first read of the desired state there is nothing to redo."""
        if self._flex_resolving:
            self.populator.sync(force=True)
            self.reconciler.wake_waiting()

    def _start_drivers(self) -> None:
        from volumemanager.csi.registration import PluginRegistrationWatcher, parse_static_driver

        self.drivers.subscribe(lambda name: self.reconciler.wake_waiting())
        for spec in self.config.csi_driver:
            name, endpoint = parse_static_driver(spec)
            self._register_static(name, endpoint)
        if self._watch_plugins:
            self._registration = PluginRegistrationWatcher(self.config.registry_dir, self.drivers)
            self._registration.start()
            self.flex.start()  # probes once now: drivers present are known before reconstruction
        else:
            self.flex.probe()

    def _register_static(self, name: str, endpoint: str) -> None:
        from volumemanager.csi import registration

        registration.register_static_driver(self.drivers, name, endpoint)

    def _start_device_events(self) -> None:
        try:
            from volumemanager.devices import DeviceEventSource

            self._device_source = DeviceEventSource()
            self._device_source.start(self._on_device_event)
        except Exception as e:  # noqa: BLE001 - the slow re-check still finds devices
            log.warning("device events unavailable, relying on periodic re-checks: %s", e)
            self._device_source = None

    def _on_device_event(self, ev) -> None:
        """A hint: wake volumes waiting for a device, and grow filesystems whose device changed."""
        self.reconciler.wake_waiting()
        if ev.action == "change":
            self.reconciler.expand_for_device(ev.devnode, ev.major, ev.minor)

    def stop(self, wait_operations: float = 30.0) -> None:
        """Stop the loop and the watchers. Mounts stay: stopping is not unmounting."""
        if getattr(self, "reporter", None) is not None:
            self.reporter.stop()
        if getattr(self, "cluster_node", None) is not None:
            self.cluster_node.stop()
        self.reconciler.stop()
        self.controller.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for thing in (self._device_source, self._registration, self._mount_watcher, self.flex):
            if thing is not None:
                try:
                    thing.stop()
                except Exception:  # noqa: BLE001
                    log.exception("stopping %s failed", type(thing).__name__)
        self.populator.stop()
        self.executor.wait_idle(wait_operations)
        self.executor.shutdown(wait=False)
        if hasattr(self.journal, "close") and self.executor.pending_count() == 0:
            self.journal.close()

    def resync(self) -> None:
        """SIGHUP: re-read the desired state now and look at every volume."""
        self.populator.source.resync()
        self.populator.sync(force=True)
        self.reconciler.mark_all_dirty()

    # --- queries --------------------------------------------------------------------------

    def rows(self) -> list[st.VolumeRow]:
        return self._mark_unread(st.daemon_rows(self.dsw, self.asw, self.executor, self.plugins.operation_label))

    def _mark_unread(self, rows: list[st.VolumeRow]) -> list[st.VolumeRow]:
        unread = [h.name for h in self.populator.source_healths() if not h.ok]
        if unread:
            # Not desired as far as is known, but the desired state is not known: kept.
            for r in rows:
                if not r.desired and r.waiting_for is None:
                    r.waiting_for = f"{', '.join(unread)} to be read whole (nothing is torn down until then)"
        return rows

    def mount_counts(self) -> tuple[int, int]:
        """(desired volumes mounted, desired volumes), per pod: cheap enough for READY/STATUS."""
        pairs = [(vtm.volume_id, vtm.pod.uid) for vtm in self.dsw.volumes_to_mount()]
        return self.asw.count_mounted(pairs), len(pairs)

    def known_mount_paths(self) -> set[str]:
        return self.asw.known_mount_paths()

    def status(self) -> dict:
        snap = self.populator.snapshot
        orphans = st.orphans(self.mounter, self.config.root_dir, self.known_mount_paths())
        from volumemanager.sources.build import find_api_source, source_entries

        api = find_api_source(self.populator.source)
        extra = {"api_server": api.server} if api is not None else {}
        return {
            **extra,
            "node": self.config.node_name,
            "source": "daemon",
            "root_dir": self.config.root_dir,
            "volumes": [r.to_dict() for r in self.rows()],
            "orphans": orphans,
            "drained": self.drain.progress(orphans),
            "drivers": [_driver_dict(d) for d in self.drivers.list()],
            "manifest_errors": [e.to_dict() for e in snap.errors],
            "sources": source_entries(self.populator.source_healths(), api),
            "interrupted_at_start": list(self.interrupted_at_start),
            "claims": self.controller.claims(),
            "snapshots": self.controller.snapshots(),
            "attachments": self.attach.entries(),
            "reconciler": {
                "passes": self.reconciler.passes,
                "last_pass_duration_ms": round(self.reconciler.last_pass_duration * 1000, 3),
                "operations_in_flight": self.executor.pending_count(),
            },
        }

    def explain(self, pod_key: str, volume: str | None = None) -> tuple[int, dict]:
        """(exit code, explanation): 0 all mounted, 1 not mounted, 2 no such pod/volume."""
        dp = self.dsw.find_pod(pod_key)
        if dp is None:
            code, body = self._explain_not_desired(pod_key, volume)
            body["lines"][:0] = self._failed_source_lines()
            return code, body
        # One pod's rows, looked up by (volume, pod uid): not a filter over every volume's row.
        rows = st.desired_pod_rows(dp, self.asw, self.executor, self.plugins.operation_label)
        if volume is not None:
            rows = [r for r in rows if r.volume == volume]
            if not rows:
                return 2, {"pod": pod_key, "found": False, "lines": [f"pod {pod_key} has no volume {volume}"]}
        drivers = {d.name for d in self.drivers.list()}
        out = []
        for r in rows:
            lines = st.explain_row(r, drivers)
            if r.state != st.MOUNTED:
                lines = lines + self._claim_lines(dp.pod.namespace, dp.pod.key, r.volume, node_size=r.size_bytes)
            else:  # a mounted volume's claim may be growing (expansion)
                lines = lines + self._claim_lines(dp.pod.namespace, dp.pod.key, r.volume, True, r.size_bytes)
            out.append({"volume": r.volume, "state": r.state, "lines": lines, "row": r.to_dict()})
        out_lines = [] if rows else [f"pod {pod_key} has no volumes"]
        drained = self.drain.explain_line()
        if drained is not None:
            out_lines.insert(0, drained)
        out_lines[:0] = self._failed_source_lines()
        all_mounted = all(r.state == st.MOUNTED for r in rows)
        return (0 if all_mounted else 1), {"pod": pod_key, "found": True, "volumes": out, "lines": out_lines,
                                            "source": dp.source}

    def _explain_not_desired(self, pod_key: str, volume: str | None) -> tuple[int, dict]:
        """A pod that is not (any more) desired but still has volumes on the host: being torn
        down, maybe blocked by a process that holds a volume. By "namespace/name", or by UID
        (after a restart the actual state knows such a pod only by its UID). 2 only when
        nothing of the pod is left on the host."""
        rows = self._mark_unread(st.undesired_pod_rows(pod_key, self.dsw, self.asw, self.executor,
                                                       self.plugins.operation_label))
        if volume is not None:
            rows = [r for r in rows if r.volume == volume]
        if not rows:
            pod_dir = self.host.pod_dir(pod_key)
            if volume is None and "/" not in pod_key and pod_key not in (".", "..") and os.path.isdir(pod_dir):
                return 1, {"pod": pod_key, "found": True, "desired": False, "volumes": [], "lines": [
                    f"pod {pod_key} is not desired and has no volumes; its directory {pod_dir} is still on the host "
                    "(removed once empty)"]}
            what = f"no volume {volume} of pod {pod_key}" if volume is not None else f"no pod {pod_key}"
            return 2, {"pod": pod_key, "found": False,
                       "lines": [f"{what} in the desired state, and none of its volumes on the host"]}
        drivers = {d.name for d in self.drivers.list()}
        out = [{"volume": r.volume, "state": r.state, "lines": st.explain_row(r, drivers), "row": r.to_dict()}
               for r in rows]
        return 1, {"pod": pod_key, "found": True, "desired": False, "volumes": out,
                   "lines": [f"pod {pod_key} is not desired any more: its volumes are being torn down"]}

    def _claim_lines(self, namespace: str, pod_key: str, volume: str, expansion_only: bool = False,
                     node_size: int | None = None) -> list[str]:
        """The controller's part of explain for a pod volume on a claim (provisioning...)."""
        from volumemanager.manifests.models import PVCSource

        pod = self.populator.snapshot.pod_by_key(pod_key)
        vol = pod.volume(volume) if pod is not None else None
        if vol is None or not isinstance(vol.source, PVCSource):
            return []
        return self.controller.explain_claim(namespace, vol.source.claim_name, expansion_only, node_size)

    def plan(self) -> list[dict]:
        return self.controller.plan() + [a.to_dict() for a in self.reconciler.plan()]

    def pod_mounted(self, pod_key: str) -> bool | None:
        dp = self.dsw.find_pod(pod_key)
        if dp is None:
            return None
        if dp.unresolved:
            return False
        return all(self.asw.pod_state(v.volume_id, v.pod.uid).value == "mounted" for v in dp.volumes)

    def wait_for_mount(self, pod_key: str, timeout: float) -> bool | None:
        """Block until every volume of the pod is mounted. None: no such pod (at the end)."""
        deadline = time.monotonic() + timeout
        with self.asw.changed:
            while True:
                state = self.pod_mounted(pod_key)
                if state:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return state
                # The DSW changes without touching the ASW (a pod appears): wake regularly.
                self.asw.changed.wait(min(remaining, 0.5))


def _log_outcomes(outcomes: list[OperationOutcome]) -> None:
    """A line per finished operation, with the fields operators filter on; for a batch, its
    successes as one summary line (each volume's line at debug: an info line per volume at
    1,000 volumes is noise), its waits and failures one line each, as always."""
    succeeded: list[OperationOutcome] = []
    for outcome in outcomes:
        err = outcome.error
        fields = {
            "volume": outcome.key.volume_id,
            "pod_uid": outcome.key.pod_uid,
            "operation": outcome.operation,
            "plugin": outcome.plugin,
            "duration_ms": round(outcome.duration * 1000, 2),
            "result": outcome_word(err),
        }
        if err is None:
            succeeded.append(outcome)
            level = logging.INFO if len(outcomes) == 1 else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "%s succeeded for %s", outcome.operation, outcome.key.volume_id, extra=fields)
        elif isinstance(err, WaitingError):
            log.info("%s waiting: %s", outcome.operation, err, extra=fields)
        else:
            fields["error"] = str(err)
            log.warning("%s failed for %s: %s", outcome.operation, outcome.key.volume_id, err, extra=fields)
    if len(outcomes) > 1 and succeeded:
        first = succeeded[0]
        plugins = sorted({o.plugin for o in succeeded})
        log.info("%s succeeded for %d volumes (%s) in %.1f ms", first.operation, len(succeeded), ", ".join(plugins),
                 sum(o.duration for o in succeeded) * 1000,
                 extra={"operation": first.operation, "plugin": ",".join(plugins), "volumes": len(succeeded),
                        "failed": len(outcomes) - len(succeeded), "result": "ok",
                        "duration_ms": round(sum(o.duration for o in succeeded) * 1000, 2)})


def _driver_dict(d) -> dict:
    return {
        "name": d.name,
        "endpoint": d.endpoint,
        "node_id": d.node_id,
        "capabilities": sorted(d.capabilities),
        "controller_endpoint": d.controller_endpoint,
        "controller_capabilities": sorted(d.controller_capabilities),
        "source": d.source,
        "registered_at": d.registered_at,
    }
