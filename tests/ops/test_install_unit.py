"""install-unit into a temporary root, and its dry run."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from volumemanager import install_unit as iu

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "volumemanager.service"


def _execstart(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_install_into_tmp_root(tmp_path: Path) -> None:
    exe = "/opt/vm venv/bin/volumemanager"
    text = iu.install_unit(root=str(tmp_path), executable=exe)
    unit = tmp_path / "etc/systemd/system/volumemanager.service"
    assert unit.read_text() == text
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    assert _execstart(text) == 'ExecStart="/opt/vm venv/bin/volumemanager" daemon --config /etc/volumemanager/config.yaml'
    assert "/usr/local/bin/volumemanager" not in text
    # Everything but the executable path is the packaged unit.
    assert text.replace('"/opt/vm venv/bin/volumemanager"', "/usr/local/bin/volumemanager") == UNIT.read_text()
    config = tmp_path / "etc/volumemanager/config.yaml"
    assert config.read_text() == (REPO / "systemd" / "config.example.yaml").read_text()
    assert _files(tmp_path) == [
        "etc", "etc/systemd", "etc/systemd/system", "etc/systemd/system/volumemanager.service",
        "etc/volumemanager", "etc/volumemanager/config.yaml",
    ]


def test_default_executable_is_this_installation(tmp_path: Path) -> None:
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "volumemanager")
    if not os.access(beside, os.X_OK):
        pytest.skip(f"no console script at {beside} (project not pip-installed in this venv)")
    text = iu.install_unit(root=str(tmp_path))
    assert _execstart(text).startswith(f"ExecStart={beside} daemon ")


def test_existing_config_is_never_overwritten_and_unit_is_replaced(tmp_path: Path) -> None:
    config = tmp_path / "etc/volumemanager/config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("log_level: debug\n")
    unit = tmp_path / "etc/systemd/system/volumemanager.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/old\n")
    iu.install_unit(root=str(tmp_path), executable="/usr/bin/volumemanager")
    assert config.read_text() == "log_level: debug\n"
    assert _execstart(unit.read_text()).startswith("ExecStart=/usr/bin/volumemanager daemon")
    assert [p.name for p in unit.parent.iterdir()] == ["volumemanager.service"]  # no temp files left


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    text = iu.install_unit(root=str(tmp_path), dry_run=True, executable="/usr/bin/volumemanager", out=out)
    assert _files(tmp_path) == []
    printed = out.getvalue()
    assert text in printed
    assert f"would write {tmp_path}/etc/systemd/system/volumemanager.service" in printed
    assert "would write the example config" in printed


def test_relative_executable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(iu.InstallUnitError, match="absolute"):
        iu.install_unit(root=str(tmp_path), executable="bin/volumemanager")
    assert _files(tmp_path) == []


def test_unwritable_root_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "etc"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(iu.InstallUnitError, match=str(tmp_path / "etc")):
        iu.install_unit(root=str(tmp_path), executable="/usr/bin/volumemanager")


def test_cli_helpers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    iu.add_arguments(parser)
    args = parser.parse_args(["--root", str(tmp_path), "--dry-run", "--executable", "/x/volumemanager"])
    assert iu.run(args) == 0
    assert "ExecStart=/x/volumemanager daemon" in capsys.readouterr().out
    assert _files(tmp_path) == []
    args = parser.parse_args(["--root", str(tmp_path), "--executable", "/x/volumemanager"])
    assert iu.run(args) == 0
    assert f"wrote {tmp_path}/etc/systemd/system/volumemanager.service" in capsys.readouterr().out
    args = parser.parse_args(["--root", str(tmp_path), "--executable", "relative"])
    assert iu.run(args) == 1
    assert "absolute" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_installed_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    iu.install_unit(root=str(tmp_path), executable="/bin/true")
    unit = tmp_path / "etc/systemd/system/volumemanager.service"
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0 and "volumemanager" not in proc.stderr, proc.stderr
