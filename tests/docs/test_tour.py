"""The README's tour works as written: its commands, run verbatim against a real daemon, print
what the README shows, and ``volumemanager drain`` leaves nothing of the demo behind.

How: a stand-in for a fresh clone in a temp dir, holding a copy of ``examples/`` and a
``.venv/bin/volumemanager`` that runs this checkout's code with ``--root-dir``/``--socket`` in
the temp dir (so the daemon never touches /var/lib/volumemanager, and no metrics port is
opened). The daemon is started with the README's own set-up command; then every ```console
block is run line by line with bash in that dir, and each output is compared with the README's
after normalising what differs between machines and runs (host name, the root dir's path, the
loop device's number, timestamps, durations, column padding). A README line ``...`` stands for
any number of lines (progress that depends on timing).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_harness import wait_until
from tests.docs import docparse
from tests.fixtures_mounts import mounts_under, require_root, require_tools, unmount_all_under

DEFAULT_ROOT = "/var/lib/volumemanager"
EXAMPLES = docparse.REPO / "examples"
HOSTNAME_PLACEHOLDER = "<hostname>"
COMMAND_TIMEOUT = 200  # drain waits up to 120 s by default
DEMO_IMAGE_PREFIX = "/var/tmp/volumemanager-demo-disk-"


def readme_daemon_command(readme: str) -> str:
    """The daemon half of the README's first set-up command (after ``bootstrap.sh &&``)."""
    m = re.search(r"^\./scripts/bootstrap\.sh && (\.venv/bin/volumemanager daemon .*)$", readme, re.M)
    assert m, "README: the set-up command that starts the daemon is missing"
    return m.group(1)


def normalise(text: str, root: str | None = None) -> str:
    if root:
        text = text.replace(root, DEFAULT_ROOT)
    text = re.sub(r"^volumes on " + re.escape(socket.gethostname()) + r"\b", f"volumes on {HOSTNAME_PLACEHOLDER}",
                  text, flags=re.M)
    text = re.sub(r"/dev/loop\d+", "/dev/loopN", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", text)
    text = re.sub(r"\(\d+s ago\)", "(Ns ago)", text)
    text = re.sub(r"\b\d+(\.\d+)? ?s\b", "Ns", text)
    text = re.sub(r"[ \t]{2,}", "  ", text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def matches(expected: str, actual: str) -> bool:
    """``expected`` (from the README, normalised) against ``actual``; a line ``...`` matches any
    number of lines."""
    parts = []
    for line in expected.splitlines():
        parts.append(r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(line) + r"\n")
    return re.fullmatch("".join(parts), actual + "\n" if actual else "") is not None


def test_normalise_and_match():
    assert matches("a\n...\nz", "a\nb\nc\nz")
    assert matches("a\n...\nz", "a\nz")
    assert not matches("a\nz", "a\nb\nz")
    assert normalise("x  in 12.5 s   (3s ago) /dev/loop7") == "x  in Ns  (Ns ago) /dev/loopN"


def test_readme_points_only_inside_the_repository():
    readme = docparse.README.read_text()
    assert "../shared" not in readme and "INTERFACE.md" not in readme
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        if not re.match(r"[a-z]+://", link):
            assert (docparse.REPO / link).exists(), f"README links to {link}, which is not in the repository"
    for doc in ("contract.md", "operator-guide.md", "architecture.md"):
        assert f"docs/{doc}" in readme


def _write_wrapper(repo: Path, root: Path, sock: Path) -> None:
    """``.venv/bin/volumemanager`` of the stand-in clone: this checkout's code, the temp dirs."""
    exe = repo / ".venv" / "bin" / "volumemanager"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"""#!/bin/sh
cmd="$1"; shift
case "$cmd" in
  daemon) exec {shlex.quote(sys.executable)} -m volumemanager daemon --root-dir {shlex.quote(str(root))} \\
            --socket {shlex.quote(str(sock))} --metrics-address "" "$@" ;;
  install-unit|-h|--help) exec {shlex.quote(sys.executable)} -m volumemanager "$cmd" "$@" ;;
  *) exec {shlex.quote(sys.executable)} -m volumemanager "$cmd" --root-dir {shlex.quote(str(root))} \\
            --socket {shlex.quote(str(sock))} "$@" ;;
esac
""")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def _demo_loop_devices(prefix: str) -> list[str]:
    """Loop devices attached to a backing file under ``prefix`` (this test's demo disks)."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            if (dev / "loop" / "backing_file").read_text().startswith(prefix):
                found.append(f"/dev/{dev.name}")
    return found


@pytest.mark.timeout(600)
def test_the_readme_tour_runs_as_written(tmp_path):
    require_root()
    require_tools("losetup", "mkfs.ext4", "python3")
    readme = docparse.README.read_text()
    blocks = docparse.console_blocks(readme)
    assert blocks, "README has no console blocks"
    repo, root, sock = tmp_path / "repo", tmp_path / "root", tmp_path / "vm.sock"
    shutil.copytree(EXAMPLES, repo / "examples", ignore=shutil.ignore_patterns("demo-disk.yaml"))
    _write_wrapper(repo, root, sock)
    # demo-disk.sh names its backing files after the manifest dir: ours are found by this.
    cksum = subprocess.run(["cksum"], input=os.path.realpath(repo / "examples" / "manifests"), text=True,
                           capture_output=True, check=True).stdout.split()[0]
    image_prefix = f"{DEMO_IMAGE_PREFIX}{cksum}."
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen(shlex.split(readme_daemon_command(readme)), cwd=repo, stdout=log,
                              stderr=subprocess.STDOUT)
    env = dict(os.environ)
    env.pop("COLUMNS", None)

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=repo, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT)

    def daemon_log() -> str:
        return (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]

    try:
        def answers() -> bool:
            assert daemon.poll() is None, f"daemon exited: {daemon_log()}"
            return '"source": "daemon"' in run(".venv/bin/volumemanager status --json").stdout

        wait_until(answers, 30, 0.1, "the daemon to answer")
        for block in blocks:
            for c in block:
                r = run(c.command)
                expected = normalise(c.output)
                actual = normalise(r.stdout, str(root))
                assert matches(expected, actual), (
                    f"README: `{c.command}` (exit {r.returncode}) printed\n{actual}\n--- the README shows\n{expected}"
                    f"\n--- daemon log\n{daemon_log()}"
                )
        # What drain promises: nothing of the demo left.
        assert not mounts_under(root), [m.mount_point for m in mounts_under(root)]
        pods = root / "pods"
        assert not (pods.exists() and any(pods.iterdir())), sorted(os.listdir(pods))
        assert not (root / "plugins/kubernetes.io/local-volume/mounts/demo-disk").exists()
        assert not _demo_loop_devices(image_prefix), "the demo's loop device is still attached"
        assert not list(Path("/var/tmp").glob(Path(image_prefix).name + "*")), "the demo's disk image is left"
        assert not (repo / "examples/manifests/demo-disk.yaml").exists()
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        log.close()
        unmount_all_under(tmp_path)
        for dev in _demo_loop_devices(image_prefix):
            subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)
        for leftover in Path("/var/tmp").glob(Path(image_prefix).name + "*"):
            leftover.unlink()
