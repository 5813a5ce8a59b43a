"""Daemon configuration: defaults, an optional YAML file (``--config``), then flags (flags win)."""

from __future__ import annotations

import os
from socket import gethostname
from dataclasses import dataclass, field, fields

import yaml

DEFAULT_ROOT_DIR = "/var/lib/volumemanager"
DEFAULT_SOCKET = "/run/volumemanager/volumemanager.sock"
DEFAULT_MANIFEST_DIR = "/etc/volumemanager/manifests"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9469"
# The kubelet's csiTimeout: a node call that has not answered in two minutes is uncertain.
DEFAULT_CSI_TIMEOUT_SECONDS = 120.0
# The kubelet's --volume-plugin-dir: FlexVolume drivers at <dir>/<vendor>~<driver>/<driver>.
DEFAULT_VOLUME_PLUGIN_DIR = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"


class ConfigError(ValueError):
    """A bad config file or flag; the message names the file and key."""


@dataclass
class DaemonConfig:
    root_dir: str = DEFAULT_ROOT_DIR
    socket: str = DEFAULT_SOCKET
    manifest_dir: str = DEFAULT_MANIFEST_DIR
    plugins_registry_dir: str | None = None  # default: <root_dir>/plugins_registry
    csi_driver: list[str] = field(default_factory=list)
    # NAME=unix:///path: the Controller service of driver NAME on a socket of its own.
    csi_controller: list[str] = field(default_factory=list)
    node_name: str = field(default_factory=gethostname)
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    log_format: str = "text"
    log_level: str = "info"
    csi_timeout: float = DEFAULT_CSI_TIMEOUT_SECONDS
    volume_plugin_dir: str = DEFAULT_VOLUME_PLUGIN_DIR
    # A kubeconfig: pods bound to node_name come from its API server too (issue 15).
    kubeconfig: str | None = None
    config: str | None = None

    @property
    def registry_dir(self) -> str:
        return self.plugins_registry_dir or os.path.join(self.root_dir, "plugins_registry")

    def validate(self) -> None:
        for name in ("root_dir", "manifest_dir"):
            if not os.path.isabs(getattr(self, name)):
                raise ConfigError(f"{name} must be an absolute path, got {getattr(self, name)!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if not float(self.csi_timeout) > 0:
            raise ConfigError(f"csi_timeout must be a positive number of seconds, got {self.csi_timeout!r}")
        for d in self.csi_driver:
            if "=" not in d:
                raise ConfigError(f"csi_driver must be NAME=unix:///path, got {d!r}")
        for d in self.csi_controller:
            if not isinstance(d, str) or "=" not in d:
                raise ConfigError(f"csi_controller must be NAME=unix:///path, got {d!r}")


def load_config_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of option names to values")
    known = {f.name for f in fields(DaemonConfig)} - {"config"}
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in known:
            raise ConfigError(f"{path}: unknown key {k!r} (known: {', '.join(sorted(known))})")
        if key in ("csi_driver", "csi_controller") and isinstance(v, str):
            v = [v]
        out[key] = v
    return out


def build_config(flag_values: dict) -> DaemonConfig:
    """Defaults < config file < flags. ``flag_values`` holds only the flags actually given."""
    values: dict = {}
    cfg_path = flag_values.get("config")
    if cfg_path:
        values.update(load_config_file(cfg_path))
    values.update({k: v for k, v in flag_values.items() if v is not None and v != []})
    for key in ("root_dir", "manifest_dir", "plugins_registry_dir", "socket", "volume_plugin_dir", "kubeconfig"):
        # Relative paths mean "from here", as with any command; the daemon keeps them absolute.
        if isinstance(values.get(key), str) and values[key]:
            values[key] = os.path.abspath(values[key])
    cfg = DaemonConfig(**values)
    cfg.validate()
    return cfg
