"""install-unit --kubeconfig: the daemon's ExecStart names the cluster's kubeconfig."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from volumemanager import install_unit as iu


def _execstart(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


def test_kubeconfig_goes_on_the_daemon_command_line(tmp_path: Path) -> None:
    text = iu.install_unit(root=str(tmp_path), executable="/usr/bin/volumemanager",
                           kubeconfig="/etc/volumemanager/kubeconfig")
    assert _execstart(text) == ("ExecStart=/usr/bin/volumemanager daemon --config /etc/volumemanager/config.yaml "
                                "--kubeconfig /etc/volumemanager/kubeconfig")
    assert (tmp_path / "etc/systemd/system/volumemanager.service").read_text() == text
    # Only that line differs from the unit without it.
    plain = iu.render_unit("/usr/bin/volumemanager")
    assert [a for a, b in zip(plain.splitlines(), text.splitlines()) if a != b] == [_execstart(plain)]


def test_a_path_with_spaces_is_quoted(tmp_path: Path) -> None:
    text = iu.render_unit("/usr/bin/volumemanager", kubeconfig="/etc/vm conf/kube config")
    assert _execstart(text).endswith(' --kubeconfig "/etc/vm conf/kube config"')


def test_a_relative_kubeconfig_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(iu.InstallUnitError, match="--kubeconfig 'kubeconfig' must be an absolute path"):
        iu.install_unit(root=str(tmp_path), executable="/usr/bin/volumemanager", kubeconfig="kubeconfig")
    assert list(tmp_path.iterdir()) == []


def test_cli_flag_and_the_note_for_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    iu.add_arguments(parser)
    args = parser.parse_args(["--root", str(tmp_path), "--executable", "/x/volumemanager",
                              "--kubeconfig", "/etc/volumemanager/kubeconfig"])
    assert iu.run(args) == 0
    out = capsys.readouterr()
    assert "does not exist yet" in out.err
    unit = (tmp_path / "etc/systemd/system/volumemanager.service").read_text()
    assert _execstart(unit).endswith("--kubeconfig /etc/volumemanager/kubeconfig")
    (tmp_path / "etc/volumemanager/kubeconfig").write_text("{}")
    assert iu.run(args) == 0
    assert "does not exist" not in capsys.readouterr().err
    args = parser.parse_args(["--root", str(tmp_path), "--executable", "/x/volumemanager", "--kubeconfig", "k"])
    assert iu.run(args) == 1
    assert "absolute" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_unit_with_kubeconfig_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    iu.install_unit(root=str(tmp_path), executable="/bin/true", kubeconfig="/etc/volumemanager/kubeconfig")
    unit = tmp_path / "etc/systemd/system/volumemanager.service"
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0 and "volumemanager" not in proc.stderr, proc.stderr
