"""CSI support: the node client, the registry of drivers and their discovery.

* ``client.CSINodeClient``: Identity + Node calls with deadlines and typed errors.
* ``registry.DriverRegistry`` / ``DriverInfo``: which drivers are registered, one client each.
* ``registration.PluginRegistrationWatcher``: kubelet-style ``plugins_registry/`` sockets;
  ``registration.StaticDriverRegistrar`` and ``parse_static_driver`` for ``--csi-driver``.

The volume plugin that uses them is ``volumemanager.plugins.csi.CSIPlugin``.
"""

import os
from typing import Any

# gRPC's fork support re-initialises its pollers in a forked child; our children (blkid,
# fsck, mkfs, mount helpers) are started by vfork through setpriv, or, without a setpriv
# that has --pdeathsig, fork with a preexec_fn and exec at once, and with fork support
# on they died of SIGABRT ("epoll_wait error: Bad file descriptor") as soon as a driver had
# been dialled. Every submodule that imports grpc is imported through this package, so this
# runs first. An operator's explicit setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__all__ = ["CSINodeClient", "DriverInfo", "DriverRegistry", "sanitize_request"]

# gRPC and the generated stubs cost ~80 ms to import: a node without CSI volumes never needs
# them, so nothing here imports them until a name is asked for.
_LAZY = {
    "CSINodeClient": "volumemanager.csi.client",
    "sanitize_request": "volumemanager.csi.client",
    "DriverInfo": "volumemanager.csi.registry",
    "DriverRegistry": "volumemanager.csi.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
