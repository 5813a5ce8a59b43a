"""Run csi-loop as a separate process from tests, and clean up after it whatever happens.

    plugin = CSILoopPlugin(tmp_path / "drv", registration_dir=tmp_path / "plugins_registry")
    plugin.start()                      # waits for the CSI socket (and the registration socket)
    plugin.set_fault("NodeStageVolume", code="INTERNAL", count=1)
    plugin.calls("NodeStageVolume")     # -> list of logged calls (dicts)
    plugin.stop(); plugin.start()       # a driver restart: same state dir, same sockets
    plugin.cleanup(extra_roots=[tmp_path])  # stop, unmount, detach loops

The process is stopped by PID (SIGTERM, then SIGKILL), never by name. ``cleanup`` unmounts
everything mounted under the plugin's directory and under ``extra_roots`` (deepest first, lazy
as a last resort) and detaches every loop device backed by one of its volume files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
# Starting the interpreter, importing grpc and the stubs takes ~0.5 s here; allow for a slow CI.
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 5.0


def _mounts_under(roots: Iterable[str]) -> list[str]:
    """Mount points at or under any of ``roots``, in mountinfo order (parents before children)."""
    roots = [os.path.realpath(r) for r in roots]
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            point = point.encode().decode("unicode_escape") if "\\" in point else point
            if any(point == r or point.startswith(r + "/") for r in roots):
                found.append(point)
    return found


def unmount_all_under(roots: Iterable[str]) -> None:
    """Unmount every mount at or under ``roots``, children first; lazy unmount if busy."""
    roots = list(roots)
    for _ in range(3):
        points = _mounts_under(roots)
        if not points:
            return
        for point in reversed(points):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)


def detach_loops_backed_by(directory: str) -> None:
    """``losetup -d`` every loop device whose backing file is in ``directory``."""
    directory = os.path.realpath(directory)
    out = subprocess.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and os.path.dirname(parts[1].strip().removesuffix(" (deleted)")) == directory:
            subprocess.run(["losetup", "-d", parts[0]], capture_output=True)


class CSILoopPlugin:
    """One csi-loop process with its own state dir; see the module doc for the API."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        driver_name: str = "csi-loop.test",
        registration_dir: str | os.PathLike[str] | None = None,
        no_stage: bool = False,
        node_id: str = "node1",
        csi_start_delay: float = 0.0,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.base_dir = Path(base_dir)
        self.driver_name = driver_name
        self.state_dir = self.base_dir / "state"
        self.socket_path = str(self.base_dir / "csi.sock")
        self.endpoint = f"unix://{self.socket_path}"
        self.registration_dir = Path(registration_dir) if registration_dir is not None else None
        self.no_stage = no_stage
        self.node_id = node_id
        self.csi_start_delay = csi_start_delay
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = self.base_dir / "stderr.log"

    @property
    def registration_socket(self) -> str | None:
        if self.registration_dir is None:
            return None
        return str(self.registration_dir / f"{self.driver_name}-reg.sock")

    @property
    def volumes_dir(self) -> Path:
        return self.state_dir / "volumes"

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "tests.csi_loop",
            "--endpoint", self.endpoint,
            "--driver-name", self.driver_name,
            "--state-dir", str(self.state_dir),
            "--node-id", self.node_id,
        ]
        if self.registration_dir is not None:
            cmd += ["--registration-dir", str(self.registration_dir)]
        if self.no_stage:
            cmd.append("--no-stage")
        if self.csi_start_delay:
            cmd += ["--csi-start-delay", str(self.csi_start_delay)]
        return cmd + self.extra_args

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT_SECONDS) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"csi-loop {self.driver_name} already running as pid {self.proc.pid}")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        wanted = [self.socket_path] + ([self.registration_socket] if self.registration_socket else [])
        if self.csi_start_delay and self.registration_socket:
            wanted = [self.registration_socket]  # the CSI socket comes later, on purpose
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"csi-loop exited with {self.proc.returncode}: {self.stderr_tail()}")
            if all(os.path.exists(p) for p in wanted):
                return
            time.sleep(0.05)
        raise TimeoutError(f"csi-loop sockets {wanted} did not appear within {timeout}s: {self.stderr_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Stop the process by PID; SIGKILL when it does not exit in time. Returns its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash. Sockets stay behind, like a real crashed driver's."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- faults and the call log ----------------------------------------------------------

    def set_fault(
        self, method: str, code: str | None = None, message: str | None = None,
        count: int | None = None, sleep: float | None = None, **extra: Any,
    ) -> None:
        """``extra`` keys go into the entry as they are: ``after=True`` (fail after doing the
        work), ``polls=N`` for the ``SnapshotNotReady`` entry."""
        faults = self.faults()
        entry: dict[str, Any] = dict(extra)
        if code is not None:
            entry["code"] = code
        if message is not None:
            entry["message"] = message
        if count is not None:
            entry["count"] = count
        if sleep is not None:
            entry["sleep"] = sleep
        faults[method] = entry
        self._write_faults(faults)

    def clear_faults(self) -> None:
        self._write_faults({})

    def faults(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "faults.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_faults(self, faults: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # A name of its own: the plugin rewrites faults.json as it uses a fault up.
        tmp = self.state_dir / f"faults.json.test-{os.getpid()}.tmp"
        tmp.write_text(json.dumps(faults))
        os.replace(tmp, self.state_dir / "faults.json")

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = (self.state_dir / "calls.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        records = [json.loads(line) for line in lines if line.strip()]
        return [r for r in records if method is None or r["method"] == method]

    def stderr_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.stderr_path.read_text().splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def loop_devices(self) -> list[str]:
        """Loop devices currently backed by this plugin's volume files."""
        out = subprocess.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"], capture_output=True, text=True).stdout
        vdir = os.path.realpath(self.volumes_dir)
        return [p[0] for p in (l.split(None, 1) for l in out.splitlines())
                if len(p) == 2 and os.path.dirname(p[1].strip().removesuffix(" (deleted)")) == vdir]

    # --- cleanup --------------------------------------------------------------------------

    def cleanup(self, extra_roots: Iterable[str | os.PathLike[str]] = ()) -> None:
        """Stop the process, unmount everything under its dir and ``extra_roots``, detach its loops."""
        try:
            self.stop()
        finally:
            unmount_all_under([str(self.base_dir), *map(str, extra_roots)])
            detach_loops_backed_by(str(self.volumes_dir))


@contextmanager
def plugin_factory(
    base_dir: str | os.PathLike[str],
    registration_dir: str | os.PathLike[str] | None = None,
    cleanup_roots: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Callable[..., CSILoopPlugin]]:
    """Yields ``make(name="csi-loop.test", no_stage=False, registration=True, start=True,
    node_id="node1", csi_start_delay=0.0, extra_args=())`` -> a (started) ``CSILoopPlugin``
    under ``base_dir/driver-<name>``, registering in ``registration_dir`` when given.

    On exit, whatever happened: every plugin is stopped by PID, everything mounted under
    ``base_dir`` and ``cleanup_roots`` is unmounted (deepest first) and the plugins' loop
    devices are detached. Use it from a pytest fixture::

        @pytest.fixture
        def csi_loop(tmp_path):
            with plugin_factory(tmp_path, tmp_path / "root" / "plugins_registry") as make:
                yield make
    """
    plugins: list[CSILoopPlugin] = []

    def make(
        name: str = "csi-loop.test", no_stage: bool = False, registration: bool = True, start: bool = True,
        node_id: str = "node1", csi_start_delay: float = 0.0, extra_args: Iterable[str] = (),
    ) -> CSILoopPlugin:
        if registration and registration_dir is not None:
            Path(registration_dir).mkdir(parents=True, exist_ok=True)
        plugin = CSILoopPlugin(
            Path(base_dir) / f"driver-{name}",
            driver_name=name,
            registration_dir=registration_dir if registration else None,
            no_stage=no_stage,
            node_id=node_id,
            csi_start_delay=csi_start_delay,
            extra_args=extra_args,
        )
        plugins.append(plugin)
        if start:
            plugin.start()
        return plugin

    try:
        yield make
    finally:
        for plugin in plugins:
            plugin.stop()
        roots = [str(base_dir), *map(str, cleanup_roots)]
        unmount_all_under(roots)
        for plugin in plugins:
            plugin.cleanup(extra_roots=roots)
