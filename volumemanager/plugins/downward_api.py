"""downwardAPI: the pod's own metadata and resources as files on the node's disk (the
kubelet's ``kubernetes.io/downward-api``). The pod's metadata travels in the spec
(``VolumeSpec.pod_info``), so a label change re-resolves the pod and rewrites the files."""

from __future__ import annotations

from fractions import Fraction

from mount_utils.atomic_writer import FileProjection
from operation_executor.plugin import ObjectLookup
from operation_executor.types import VolumeSpec
from volumemanager.manifests.models import DownwardAPISource
from volumemanager.plugins.projection import ProjectionPlugin, downward_payload, node_allocatable

DOWNWARD_API_PLUGIN = "kubernetes.io/downward-api"


class DownwardAPIPlugin(ProjectionPlugin):
    name = DOWNWARD_API_PLUGIN
    memory = False
    uses_pod_info = True

    def can_support(self, source: object) -> bool:
        return isinstance(source, DownwardAPISource)

    def _allocatable(self) -> dict[str, Fraction]:
        return node_allocatable(self.host.root_dir)

    def build_payload(self, spec: VolumeSpec, namespace: str, objects: ObjectLookup) -> dict[str, FileProjection]:
        src: DownwardAPISource = spec.source
        return downward_payload(src.items, src.default_mode, spec.pod_info, self._allocatable())
