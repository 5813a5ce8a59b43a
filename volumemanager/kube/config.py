"""Where the API server is and how to authenticate: a kubeconfig file, or in-cluster config.

One place decides this so that the source (list/watch) and the reporter (Events, node status,
CSINode) talk to the same server as the same identity. lightkube is imported here, lazily,
so that a manifest-only node never pays for it (see docs/design/kubernetes-client.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: The service-account files of a pod (the kubelet mounts them): their presence, with
#: KUBERNETES_SERVICE_HOST, means in-cluster config.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: The field manager our writes are recorded under (server-side apply, managedFields).
FIELD_MANAGER = "volumemanager"


class KubeConfigError(Exception):
    """No usable API-server configuration: the message names the file or variable at fault."""


@dataclass(frozen=True)
class ApiServerConfig:
    """How the daemon was told to reach the API server: ``kubeconfig`` (a path) or in-cluster."""

    kubeconfig: str | None = None
    in_cluster: bool = False

    @property
    def describe(self) -> str:
        return f"kubeconfig {self.kubeconfig}" if self.kubeconfig else "in-cluster service account"


def api_server_config(kubeconfig: str | None, environ: dict[str, str] | None = None,
                      service_account_dir: str = SERVICE_ACCOUNT_DIR) -> ApiServerConfig | None:
    """The API-server configuration the daemon runs with, or None for manifest-only mode.

    ``--kubeconfig PATH`` wins; otherwise in-cluster config when ``KUBERNETES_SERVICE_HOST`` is
    set and a service-account token is present (what a pod sees); otherwise None.
    """
    env = os.environ if environ is None else environ
    if kubeconfig:
        return ApiServerConfig(kubeconfig=os.path.abspath(kubeconfig))
    if env.get("KUBERNETES_SERVICE_HOST") and os.path.exists(os.path.join(service_account_dir, "token")):
        return ApiServerConfig(in_cluster=True)
    return None


def make_client(cfg: ApiServerConfig, *, timeout: float = 30.0):
    """A synchronous lightkube ``Client`` for ``cfg``; ``KubeConfigError`` naming the file when
    it cannot be read or has no usable context."""
    from lightkube import Client, KubeConfig
    from lightkube.core.exceptions import ConfigError

    try:
        if cfg.kubeconfig:
            config = KubeConfig.from_file(cfg.kubeconfig)
        else:
            config = KubeConfig.from_service_account()
    except (OSError, ConfigError, ValueError, KeyError) as e:
        raise KubeConfigError(f"{cfg.describe}: {e}") from None
    try:
        return Client(config=config, field_manager=FIELD_MANAGER, timeout=httpx_timeout(timeout), trust_env=False)
    except (ConfigError, ValueError, KeyError) as e:
        raise KubeConfigError(f"{cfg.describe}: {e}") from None


def httpx_timeout(seconds: float):
    """A request deadline for lightkube's HTTP layer (httpx2): connect, read, write, pool."""
    import httpx2

    return httpx2.Timeout(seconds)
