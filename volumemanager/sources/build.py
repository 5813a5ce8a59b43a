"""Which desired-state sources the daemon runs with: the manifest dir always, and the API
server when a kubeconfig is given (or in-cluster config is found), both at once like the
kubelet's static pods beside the API server's. lightkube is imported only in that case."""

from __future__ import annotations

from typing import Any

from volumemanager.config import ConfigError, DaemonConfig


def build_source(cfg: DaemonConfig) -> Any:
    """The manifest dir source, or it combined with an API-server source.

    A kubeconfig that cannot be read stops the start (``ConfigError`` naming the file); an API
    server that cannot be reached does not: the source starts stale and nothing of its pods is
    torn down until it has listed every kind once.
    """
    from volumemanager.kube.config import KubeConfigError, api_server_config, make_client
    from volumemanager.sources.manifest_dir import ManifestDirSource

    manifests = ManifestDirSource(cfg.manifest_dir)
    api_cfg = api_server_config(getattr(cfg, "kubeconfig", None))
    if api_cfg is None:
        return manifests
    from volumemanager.sources.apiserver import ApiServerSource
    from volumemanager.sources.combined import CombinedSource

    try:
        client = make_client(api_cfg)
    except KubeConfigError as e:
        raise ConfigError(f"kubeconfig: {e}") from None
    return CombinedSource([manifests, ApiServerSource(client, cfg.node_name)])


def find_api_source(source: Any) -> Any:
    """The API-server source inside a (wrapped, combined) source, or None."""
    import sys

    module = sys.modules.get("volumemanager.sources.apiserver")
    if module is None:
        return None  # never imported, so no such source exists (and status need not import it)
    ApiServerSource = module.ApiServerSource

    seen = 0
    todo = [source]
    while todo and seen < 16:
        s = todo.pop(0)
        seen += 1
        if isinstance(s, ApiServerSource):
            return s
        inner = getattr(s, "__dict__", {})
        if "source" in inner:
            todo.append(inner["source"])
        todo.extend(inner.get("sources", ()))
    return None


def source_entries(healths: list, api: Any) -> list[dict]:
    """``status --json``'s ``sources``: each source's health, and for the API server its kind
    (``api``) and the watch state of every kind it lists."""
    out = []
    for h in healths:
        d = h.to_dict()
        if api is not None and h.name == api.name:
            d["kind"] = "api"
            d["server"] = api.server
            d["watches"] = [w.to_dict() for w in api.watch_states()]
        else:
            d["kind"] = "manifests"
        out.append(d)
    return out
