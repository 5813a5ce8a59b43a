"""Desired-state sources: where the pods and volumes the daemon should serve come from."""

from volumemanager.sources.base import DesiredStateSource
from volumemanager.sources.manifest_dir import RESCAN_INTERVAL, ManifestDirSource

__all__ = ["DesiredStateSource", "ManifestDirSource", "RESCAN_INTERVAL"]
