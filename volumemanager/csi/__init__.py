"""CSI support: the node client, the registry of drivers and their discovery.

* ``client.CSINodeClient``: Identity + Node calls with deadlines and typed errors.
* ``registry.DriverRegistry`` / ``DriverInfo``: which drivers are registered, one client each.
* ``registration.PluginRegistrationWatcher``: kubelet-style ``plugins_registry/`` sockets;
  ``registration.StaticDriverRegistrar`` and ``parse_static_driver`` for ``--csi-driver``.

The volume plugin that uses them is ``volumemanager.plugins.csi.CSIPlugin``.
"""

from volumemanager.csi.client import CSINodeClient, sanitize_request
from volumemanager.csi.registry import DriverInfo, DriverRegistry

__all__ = ["CSINodeClient", "DriverInfo", "DriverRegistry", "sanitize_request"]
