"""projected: configMap, secret and downwardAPI sources combined in one directory (the
kubelet's ``kubernetes.io/projected``), on a tmpfs since it may hold secrets or tokens.

A ``serviceAccountToken`` source needs an API server to issue the token: for a pod from the
API server the host's ``service_account_token`` lookup answers (kube/tokens.py: TokenRequest
bound to the pod, refreshed at 80 % of its lifetime, the refresh re-resolving the pod so that
the content token changes and the files are written again); for a manifest pod (or without
an API server) the volume waits, saying so."""

from __future__ import annotations

from fractions import Fraction

from mount_utils.atomic_writer import FileProjection
from operation_executor.plugin import ObjectLookup
from operation_executor.types import ConfigMapRef, SecretRef, VolumeSpec
from volumemanager.manifests import models as m
from volumemanager.plugins.projection import (
    SERVICE_ACCOUNT_TOKEN_REASON,
    ContentUnavailable,
    ProjectionPlugin,
    downward_payload,
    keyed_payload,
    node_allocatable,
)

PROJECTED_PLUGIN = "kubernetes.io/projected"


class ProjectedPlugin(ProjectionPlugin):
    name = PROJECTED_PLUGIN
    memory = True
    uses_pod_info = True

    def can_support(self, source: object) -> bool:
        return isinstance(source, m.ProjectedSource)

    def _allocatable(self) -> dict[str, Fraction]:
        return node_allocatable(self.host.root_dir)

    def build_payload(self, spec: VolumeSpec, namespace: str, objects: ObjectLookup) -> dict[str, FileProjection]:
        """The sources in order; a later source's file replaces an earlier one at the same
        path (the kubelet's projected payload does the same)."""
        src: m.ProjectedSource = spec.source
        mode = src.default_mode
        out: dict[str, FileProjection] = {}
        for proj in src.sources:
            if isinstance(proj, m.ConfigMapProjection):
                data = objects.get_configmap(ConfigMapRef(namespace, proj.name))
                out.update(keyed_payload("configmap", namespace, proj.name, data, proj.items, mode, proj.optional))
            elif isinstance(proj, m.SecretProjection):
                data = objects.get_secret(SecretRef(namespace, proj.name))
                out.update(keyed_payload("secret", namespace, proj.name, data, proj.items, mode, proj.optional))
            elif isinstance(proj, m.DownwardAPIProjection):
                out.update(downward_payload(proj.items, mode, spec.pod_info, self._allocatable()))
            elif isinstance(proj, m.ServiceAccountTokenProjection):
                lookup = getattr(self.host, "service_account_token", None)
                token = (lookup(spec.pod_info, proj.audience, proj.expiration_seconds)
                         if lookup is not None and spec.pod_info is not None else None)
                if token is None:
                    raise ContentUnavailable(SERVICE_ACCOUNT_TOKEN_REASON, "an API server")
                out[proj.path] = FileProjection(bytes(token), mode)
            else:
                raise ContentUnavailable(f"projected source {type(proj).__name__} is not served",
                                         "a version of the daemon that serves it")
        return out
