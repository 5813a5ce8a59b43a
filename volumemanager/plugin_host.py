"""The daemon's side of ``operation_executor.plugin.PluginHost``: the kubelet-compatible on-disk
layout under the root dir, the mounter, and secret lookup from the desired state."""

from __future__ import annotations

import os
from typing import Callable, Mapping

from operation_executor.types import ConfigMapRef, PodInfo, SecretRef

# (pod, audience, expirationSeconds) -> the token's bytes, or None when no API server serves
# this pod's tokens; raises the projected plugin's ContentUnavailable while one is on its way.
TokenLookup = Callable[[PodInfo, str, int], "bytes | None"]


def escape_plugin_name(plugin_name: str) -> str:
    """kubelet's EscapeQualifiedName: ``example.com/my-plugin`` -> ``example.com~my-plugin``."""
    return plugin_name.replace("/", "~")


def unescape_plugin_name(escaped: str) -> str:
    return escaped.replace("~", "/")


class DaemonPluginHost:
    """Paths are computed, never trusted from input: every name that goes into one was
    validated by the manifest loader (no ``/``, no ``..``, no control characters)."""

    def __init__(
        self,
        root_dir: str,
        node_name: str,
        mounter,
        secret_lookup: Callable[[SecretRef], Mapping[str, bytes] | None] | None = None,
    ) -> None:
        self.root_dir = os.path.abspath(root_dir)
        self.node_name = node_name
        self._mounter = mounter
        self._secret_lookup = secret_lookup or (lambda ref: None)
        self._configmap_lookup: Callable[[ConfigMapRef], Mapping[str, bytes] | None] = lambda ref: None
        self._token_lookup: TokenLookup = lambda pod, audience, expiration_seconds: None

    @property
    def mounter(self):
        return self._mounter

    @property
    def pods_dir(self) -> str:
        return os.path.join(self.root_dir, "pods")

    def pod_dir(self, pod_uid: str) -> str:
        return os.path.join(self.pods_dir, pod_uid)

    def pod_volume_dir(self, pod_uid: str, plugin_name: str, volume_name: str) -> str:
        return os.path.join(self.pod_dir(pod_uid), "volumes", escape_plugin_name(plugin_name), volume_name)

    def pod_volume_device_dir(self, pod_uid: str, plugin_name: str) -> str:
        return os.path.join(self.pod_dir(pod_uid), "volumeDevices", escape_plugin_name(plugin_name))

    def plugin_dir(self, plugin_name: str) -> str:
        return os.path.join(self.root_dir, "plugins", plugin_name)

    def get_secret(self, ref: SecretRef) -> Mapping[str, bytes] | None:
        return self._secret_lookup(ref)

    def set_secret_lookup(self, lookup: Callable[[SecretRef], Mapping[str, bytes] | None]) -> None:
        self._secret_lookup = lookup

    def get_configmap(self, ref: ConfigMapRef) -> Mapping[str, bytes] | None:
        return self._configmap_lookup(ref)

    def set_configmap_lookup(self, lookup: Callable[[ConfigMapRef], Mapping[str, bytes] | None]) -> None:
        self._configmap_lookup = lookup

    def service_account_token(self, pod: PodInfo, audience: str, expiration_seconds: int) -> bytes | None:
        """A projected ``serviceAccountToken``: the bound token of ``pod``'s service account
        (kube/tokens.py), None in manifest mode. Never log the result."""
        return self._token_lookup(pod, audience, expiration_seconds)

    def set_token_lookup(self, lookup: TokenLookup) -> None:
        self._token_lookup = lookup
