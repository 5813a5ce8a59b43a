"""The reporter's narrow inputs, built from the daemon's parts (so ``volume_manager.py`` needs
one call, and the reporter knows nothing of the VolumeManager).

Which pods get Events: only pods that came from the API server (a manifest pod has no object
there to attach an Event to). The API-server source marks its pods by their origin; a pod
whose ``DesiredPod.source`` starts with ``api:`` counts as one (``is_api_pod``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from operation_executor.types import BLOCK, PodRef
from volumemanager.sources.base import origin_kind

if TYPE_CHECKING:
    from operation_executor.executor import OperationOutcome
    from volumemanager.kube.reporter import ReporterInputs
    from volumemanager.volume_manager import VolumeManager


def is_api_pod(source: str | None) -> bool:
    """A desired pod read from the API server (not from a manifest file)."""
    return origin_kind(source) == "api"


def reporter_inputs(vm: "VolumeManager") -> ReporterInputs:
    # Imported here, not at the top: the daemon imports this module at every start, and the
    # reporter (with the Events code, ~30 ms of imports) is needed only with an API server.
    from volumemanager.kube.node_status import volumes_in_use
    from volumemanager.kube.reporter import EventTarget, ReporterInputs

    dsw, asw, plugins = vm.dsw, vm.asw, vm.plugins

    def in_use() -> list[str]:
        # kubelet GetVolumesInUse: desired volumes to mount and attached volumes of the actual state.
        specs: list[Any] = [v.spec for v in dsw.volumes_to_mount()]
        specs += [av.spec for av in asw.attached_volumes()]
        return volumes_in_use(specs, attachable_name)

    def attachable_name(spec) -> str | None:
        try:
            return plugins.find(spec.plugin_name).attachable_volume_name(spec)
        except KeyError:
            return None

    def targets(outcome: OperationOutcome) -> list[EventTarget]:
        key = outcome.key
        out = []
        for vtm in dsw.volumes_to_mount([key.volume_id]):
            if key.pod_uid is not None and vtm.pod.uid != key.pod_uid:
                continue
            dp = dsw.get_pod(vtm.pod.uid)
            if dp is None or not is_api_pod(dp.source):
                continue
            label = plugins.operation_label(outcome.plugin or vtm.plugin_name, outcome.operation)
            out.append(EventTarget(vtm.pod, vtm.outer_name, vtm.spec.volume_mode == BLOCK, label))
        return out

    def explain(pod: PodRef, volume: str) -> list[str]:
        _, body = vm.explain(pod.key, volume)
        lines: list[str] = []
        for v in body.get("volumes", []):
            lines.extend(v.get("lines", []))
        return lines

    return ReporterInputs(
        volumes_in_use=in_use,
        in_use_ready=vm._ready_to_unmount,
        add_completion_callback=vm.executor.add_completion_callback,
        event_targets=targets,
        explain=explain,
        drivers=vm.drivers.list,
        subscribe_drivers=vm.drivers.subscribe,
    )


def start_for(vm: "VolumeManager"):
    """The daemon's one call: a started reporter when an API server is configured, else None."""
    from volumemanager.kube.config import api_server_config

    cfg = api_server_config(getattr(vm.config, "kubeconfig", None))
    if cfg is None:
        return None
    from volumemanager.kube.reporter import start_reporter

    return start_reporter(cfg, vm.config.node_name, reporter_inputs(vm))
