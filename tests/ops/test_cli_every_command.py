"""Every command as a newcomer meets it: each flag of each command says what it does in
``--help``, and ``drain``/``uncordon`` fail like the other client commands (one line naming
the command, the shared exit codes) when no daemon answers."""

from __future__ import annotations

import argparse
import subprocess
import sys

from volumemanager import cli
from volumemanager import exit_codes as ec


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_flag_of_every_command_has_a_help_text():
    missing = [f"{name} {'/'.join(a.option_strings)}"
               for name, p in _subparsers().items() for a in p._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"flags without a help text: {missing}"


def test_drain_and_uncordon_without_a_daemon_name_the_command_and_exit_3(tmp_path):
    common = ["--root-dir", str(tmp_path / "root"), "--socket", str(tmp_path / "none.sock")]
    for args in (["drain"], ["drain", "--dry-run"], ["uncordon"]):
        r = subprocess.run([sys.executable, "-m", "volumemanager", *args, *common], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == ec.NO_DAEMON, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(f"volumemanager {args[0]}: no daemon answers"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stdout == "" and not (tmp_path / "root").exists()


def test_offline_table_never_shows_an_unmounted_volume_as_a_bare_path(tmp_path):
    """Without a daemon a desired volume that is not mounted reads "not mounted at PATH", so
    the path is not taken for a mount (the JSON keeps ``mount_path`` as it is)."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "p.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: demo}\n"
        "spec:\n  volumes:\n  - name: cache\n    emptyDir: {}\n")
    common = ["--root-dir", str(tmp_path / "root"), "--socket", str(tmp_path / "none.sock"),
              "--manifest-dir", str(manifests)]
    r = subprocess.run([sys.executable, "-m", "volumemanager", "status", *common], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    (row,) = [line for line in r.stdout.splitlines() if line.startswith("demo/web")]
    path = f"{tmp_path}/root/pods/"
    assert f"not mounted at {path}" in row and row.endswith("(why, and what comes next, only the daemon knows)"), row


def test_a_bad_or_busy_metrics_address_is_one_line_and_exit_1(tmp_path):
    """Not a traceback; a malformed address creates nothing under the root dir."""
    import socket

    root = tmp_path / "root"
    common = ["--root-dir", str(root), "--socket", str(tmp_path / "vm.sock"), "--manifest-dir", str(tmp_path)]
    r = subprocess.run([sys.executable, "-m", "volumemanager", "daemon", *common, "--metrics-address", "nonsense"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr == "volumemanager: --metrics-address 'nonsense': expected HOST:PORT\n", r.stderr
    assert not root.exists()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        r = subprocess.run([sys.executable, "-m", "volumemanager", "daemon", *common, "--metrics-address", address],
                           capture_output=True, text=True, timeout=30)
    finally:
        busy.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"volumemanager: --metrics-address '{address}': cannot listen")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "vm.sock").exists()


def test_a_negative_or_non_numeric_timeout_is_a_usage_error(tmp_path):
    for command in (["wait", "demo/web"], ["drain"]):
        for bad in ("-5", "nan", "abc"):
            r = subprocess.run([sys.executable, "-m", "volumemanager", *command, "--timeout", bad,
                                "--socket", str(tmp_path / "none.sock")], capture_output=True, text=True, timeout=30)
            assert r.returncode == 2 and "argument --timeout" in r.stderr, (command, bad, r.stderr)
