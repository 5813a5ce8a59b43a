"""The built-in volume plugins, one module each, and their registration.

Everything particular to a volume type lives in its module (see
``operation_executor.plugin.VolumePlugin``); adding a plugin is its module, its tests and one
line in :func:`build_plugins`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

from operation_executor.plugin import PluginHost, PluginRegistry

if TYPE_CHECKING:
    from volumemanager.csi.registry import DriverRegistry
    from volumemanager.plugins.flexvolume import FlexDriverLookup


def build_plugins(host: PluginHost, driver_registry: DriverRegistry | None = None,
                  csi_fs_group_policy: Callable[[str], str | None] | None = None,
                  flex_drivers: FlexDriverLookup | None = None,
                  csi_publish_context: Callable[[str, str, str | None], Mapping[str, str]] | None = None,
                  ) -> PluginRegistry:
    """Every built-in plugin. CSI needs the driver registry (a fresh empty one when None)
    and, to honour CSIDriver objects, ``csi_fs_group_policy`` (driver name -> its CSIDriver's
    fsGroupPolicy or None); the others only the host. Imported here, not at the top, so that importing one plugin
    module does not load them all."""
    from volumemanager.plugins.configmap import ConfigMapPlugin
    from volumemanager.plugins.csi import CSIPlugin
    from volumemanager.plugins.downward_api import DownwardAPIPlugin
    from volumemanager.plugins.empty_dir import EmptyDirPlugin
    from volumemanager.plugins.flexvolume import FlexVolumePlugin
    from volumemanager.plugins.host_path import HostPathPlugin
    from volumemanager.plugins.local import LocalPlugin
    from volumemanager.plugins.nfs import NFSPlugin
    from volumemanager.plugins.projected import ProjectedPlugin
    from volumemanager.plugins.secret import SecretPlugin

    if driver_registry is None:
        from volumemanager.csi.registry import DriverRegistry

        driver_registry = DriverRegistry()
    reg = PluginRegistry()
    reg.register(EmptyDirPlugin(host))
    reg.register(HostPathPlugin(host))
    reg.register(LocalPlugin(host))
    reg.register(NFSPlugin(host))
    reg.register(CSIPlugin(host, driver_registry, fs_group_policy=csi_fs_group_policy,
                           publish_context=csi_publish_context))  # the attachments' publish_context
    reg.register(ConfigMapPlugin(host))
    reg.register(SecretPlugin(host))
    reg.register(DownwardAPIPlugin(host))
    reg.register(ProjectedPlugin(host))
    reg.register(FlexVolumePlugin(host, flex_drivers))  # flex_drivers: the FlexVolume prober
    return reg
