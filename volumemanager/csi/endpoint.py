"""CSI endpoint strings, without gRPC: parsing an endpoint must not cost a gRPC import."""

from __future__ import annotations


def socket_path_of(endpoint: str) -> str:
    """``unix:///run/x.sock`` (or ``unix:/run/x.sock``, or a bare absolute path) -> ``/run/x.sock``.

    Raises ``ValueError`` naming the endpoint for anything else: CSI allows unix sockets only.
    """
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
    else:
        path = endpoint
    if not path.startswith("/"):
        raise ValueError(f"CSI endpoint {endpoint!r} is not a unix socket with an absolute path")
    return path
