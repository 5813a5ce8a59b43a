"""volumemanager: a node-side volume manager daemon (desired state -> reconciler -> mounts)."""

__version__ = "0.1.0"
