"""CSI support: the node client, the registry of drivers and their discovery.

* ``client.CSINodeClient``: Identity + Node calls with deadlines and typed errors.
* ``registry.DriverRegistry`` / ``DriverInfo``: which drivers are registered, one client each.
* ``registration.PluginRegistrationWatcher``: kubelet-style ``plugins_registry/`` sockets;
  ``registration.StaticDriverRegistrar`` and ``parse_static_driver`` for ``--csi-driver``.

The volume plugin that uses them is ``volumemanager.plugins.csi.CSIPlugin``.
"""

from typing import Any

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
