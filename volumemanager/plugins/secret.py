"""secret: a Secret's keys as files on a tmpfs (the kubelet's ``kubernetes.io/secret``), so
secret bytes never touch a disk; rewritten atomically when the Secret changes. The values
are never logged: errors name the secret and its keys only."""

from __future__ import annotations

from mount_utils.atomic_writer import FileProjection
from operation_executor.plugin import ObjectLookup
from operation_executor.types import SecretRef, VolumeSpec
from volumemanager.manifests.models import SecretVolumeSource
from volumemanager.plugins.projection import ProjectionPlugin, keyed_payload

SECRET_PLUGIN = "kubernetes.io/secret"


class SecretPlugin(ProjectionPlugin):
    name = SECRET_PLUGIN
    memory = True

    def can_support(self, source: object) -> bool:
        return isinstance(source, SecretVolumeSource)

    def build_payload(self, spec: VolumeSpec, namespace: str, objects: ObjectLookup) -> dict[str, FileProjection]:
        src: SecretVolumeSource = spec.source
        data = objects.get_secret(SecretRef(namespace, src.secret_name))
        return keyed_payload("secret", namespace, src.secret_name, data, src.items, src.default_mode, src.optional)
