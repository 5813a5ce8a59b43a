"""The systemd unit: valid for systemd, no mount namespace, shipped as package data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "volumemanager.service"
EXAMPLE_CONFIG = REPO / "systemd" / "config.example.yaml"


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_contracted_directives() -> None:
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["KillMode"] == ["process"]
    assert d["Restart"] == ["on-failure"]
    assert d["WatchdogSec"] == ["30s"]
    assert "network-online.target" in d["After"][0] and "local-fs.target" in d["After"][0]
    assert d["Wants"] == ["network-online.target"]
    assert d["ExecStart"] == ["/usr/local/bin/volumemanager daemon --config /etc/volumemanager/config.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "TimeoutStopSec" in d and "LimitNOFILE" in d


def test_unit_does_not_get_its_own_mount_namespace() -> None:
    # Any of these would keep the daemon's mounts from reaching the host.
    d = _directives(UNIT.read_text())
    forbidden = [k for k in d if re.match(r"(Private|Protect|ReadOnly|ReadWrite|Inaccessible|Temporary|Bind)\w*$|MountFlags$|RootDirectory$|RootImage$", k)]
    assert forbidden == []


def test_package_data_unit_is_identical() -> None:
    packaged = REPO / "volumemanager" / "data" / "volumemanager.service"
    assert packaged.read_bytes() == UNIT.read_bytes()
    via_resources = resources.files("volumemanager").joinpath("data", "volumemanager.service").read_bytes()
    assert via_resources == UNIT.read_bytes()


def test_package_data_example_config_is_identical() -> None:
    packaged = REPO / "volumemanager" / "data" / "config.example.yaml"
    assert packaged.read_bytes() == EXAMPLE_CONFIG.read_bytes()


def test_example_config_keys_mirror_daemon_flags() -> None:
    import yaml

    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    documented = set(re.findall(r"^#?\s*([a-z_]+):", EXAMPLE_CONFIG.read_text(), re.M))
    expected = {"root_dir", "manifest_dir", "plugins_registry_dir", "csi_driver", "node_name",
                "metrics_address", "log_format", "log_level", "socket"}
    assert set(data) <= expected
    assert expected <= documented
    assert data["csi_driver"] == []
    assert data["log_format"] in ("text", "json")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", ["volumemanager.service", "workload-example.service"])
def test_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    text = (REPO / "systemd" / unit).read_text()
    # verify insists that ExecStart binaries exist: point them at one that does.
    text = text.replace("/usr/local/bin/volumemanager", "/bin/true").replace("/usr/bin/env", "/bin/true")
    path = tmp_path / unit
    path.write_text(text)
    if unit != "volumemanager.service":
        # Dependencies are looked up beside the verified unit.
        (tmp_path / "volumemanager.service").write_text(
            UNIT.read_text().replace("/usr/local/bin/volumemanager", "/bin/true"))
    proc = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=50,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    # verify exits 0 even for unknown keys; any complaint about our files fails.
    ours = [line for line in proc.stderr.splitlines() if str(tmp_path) in line or unit in line
            or "volumemanager" in line]
    assert ours == [], proc.stderr
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(60)
def test_systemd_analyze_catches_a_typo(tmp_path: Path) -> None:
    """The check above would notice a broken unit (guards against a silent tool)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / "volumemanager.service"
    path.write_text(UNIT.read_text().replace("/usr/local/bin/volumemanager", "/bin/true")
                    .replace("WatchdogSec=", "WatchdogSecc="))
    proc = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=50)
    assert "WatchdogSecc" in proc.stderr
