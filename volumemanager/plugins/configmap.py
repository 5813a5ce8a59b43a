"""configMap: a ConfigMap's keys as files in a directory on the node's disk (the kubelet's
``kubernetes.io/configmap``), rewritten atomically when the ConfigMap changes."""

from __future__ import annotations

from mount_utils.atomic_writer import FileProjection
from operation_executor.plugin import ObjectLookup
from operation_executor.types import ConfigMapRef, VolumeSpec
from volumemanager.manifests.models import ConfigMapVolumeSource
from volumemanager.plugins.projection import ProjectionPlugin, keyed_payload

CONFIGMAP_PLUGIN = "kubernetes.io/configmap"


class ConfigMapPlugin(ProjectionPlugin):
    name = CONFIGMAP_PLUGIN
    memory = False

    def can_support(self, source: object) -> bool:
        return isinstance(source, ConfigMapVolumeSource)

    def build_payload(self, spec: VolumeSpec, namespace: str, objects: ObjectLookup) -> dict[str, FileProjection]:
        src: ConfigMapVolumeSource = spec.source
        data = objects.get_configmap(ConfigMapRef(namespace, src.name))
        return keyed_payload("configmap", namespace, src.name, data, src.items, src.default_mode, src.optional)
