"""Runs the real daemon as a subprocess on a temporary root dir, for end-to-end tests.

``DaemonProcess`` starts ``python -m volumemanager daemon`` with its own root dir, manifest
dir, registry dir and admin socket under a tmp dir, waits until it answers, offers the CLI
(``cli(...)`` / ``status()``), and stops it by PID. ``daemon`` (fixture) also unmounts anything
left under the root dir afterwards, so a failing test cannot break the next one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.fixtures_mounts import mounts_under, unmount_all_under

# The daemon answers its socket within this on a loaded 2-core machine.
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 20.0


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pods_on_claim(claim: str, pods: tuple[str, ...] | list[str], namespace: str = "demo") -> list[str]:
    """Manifest documents for pods that each mount ``claim`` as their volume ``vol``."""
    return [f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {namespace}}}
spec:
  volumes:
  - name: vol
    persistentVolumeClaim: {{claimName: {claim}}}
""" for pod in pods]


class DaemonProcess:
    def __init__(self, base: Path, extra_args: list[str] | None = None, env: dict | None = None) -> None:
        self.base = base
        self.root = base / "root"
        self.manifests = base / "manifests"
        self.registry = base / "plugins_registry"
        self.socket = base / "vm.sock"
        self.log_path = base / "daemon.log"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args or [])
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def common(self) -> list[str]:
        return ["--root-dir", str(self.root), "--socket", str(self.socket)]

    def start(self, wait: bool = True) -> "DaemonProcess":
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "volumemanager", "daemon", *self.common,
               "--manifest-dir", str(self.manifests), "--plugins-registry-dir", str(self.registry),
               "--metrics-address", "", "--node-name", "testnode", "--log-level", "debug", *self.extra_args]
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        if wait:
            wait_until(self._answers, START_TIMEOUT_SECONDS, 0.05, f"the daemon to answer (log: {self.log(4000)})")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.log(4000)}")
        r = self.cli("status", "--json", check=False)
        return r.returncode == 0 and '"source": "daemon"' in r.stdout

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            if self._log:
                self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self, tail: int | None = None) -> str:
        """The daemon's log; ``tail`` keeps only the last characters (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "volumemanager", args[0], *self.common, *args[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def states(self, pod: str) -> dict[str, str]:
        return {v["volume"]: v["state"] for v in self.status()["volumes"] if v["pod"] == pod}

    def write_manifest(self, name: str, text: str) -> Path:
        """Atomically (write + rename), as an operator's tooling should."""
        path = self.manifests / name
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def mounts(self) -> list:
        return mounts_under(self.root)


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[DaemonProcess] = []

    def make(extra_args: list[str] | None = None, start: bool = True, env: dict | None = None) -> DaemonProcess:
        d = DaemonProcess(tmp_path, extra_args, env)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.kill()
    unmount_all_under(tmp_path)


@pytest.fixture
def daemon(daemon_factory) -> DaemonProcess:
    return daemon_factory()
