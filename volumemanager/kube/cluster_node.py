"""The node's API-mode duties that are not the desired-state source itself (issue 15, items
4 and 6): VolumeAttachments gate the CSI PVs of the API server (``kube/attachments.py``), and
projected ``serviceAccountToken`` sources get bound tokens (``kube/tokens.py``).

Built only when the daemon has an API-server source; narrow inputs (the source, the node
name, the host's lookup setter, two wake-ups), so this module knows nothing of the
VolumeManager.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from volumemanager.kube.attachments import ClusterAttachments
from volumemanager.kube.tokens import TokenManager, lightkube_requester, projected_token_lookup

log = logging.getLogger(__name__)


@dataclass
class ClusterNode:
    attachments: ClusterAttachments
    tokens: TokenManager

    def stop(self) -> None:
        self.tokens.stop()


def cluster_node_for(source: Any, node_name: str, kubeconfig: Optional[str], host: Any,
                     resolve_again: Callable[[Iterable[str]], Any],
                     wake_waiting: Callable[[], None]) -> Optional[ClusterNode]:
    """The API-mode parts when ``source`` holds an API-server source, else None (manifest
    mode: CSI attach stays the one-host controller's, tokens wait with their reason)."""
    from volumemanager.sources.build import find_api_source

    api = find_api_source(source)
    if api is None:
        return None
    attachments = ClusterAttachments(api.snapshot, api.volume_attachments, node_name)
    # A VolumeAttachment that changes wakes the volumes that wait (for it).
    api.on_attachments_change.append(wake_waiting)

    def is_api_pod(uid: str) -> bool:
        return uid in api.snapshot().pods

    clients: list[Any] = []

    def request(key):
        if not clients:  # made on the first token: a node without projected tokens never needs it
            from volumemanager.kube.config import api_server_config, make_client

            clients.append(make_client(api_server_config(kubeconfig)))
        return lightkube_requester(clients[0])(key)

    tokens = TokenManager(request, lambda uid: resolve_again([uid]), alive=is_api_pod)
    host.set_token_lookup(projected_token_lookup(tokens, is_api_pod))
    return ClusterNode(attachments, tokens)
