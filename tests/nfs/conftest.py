"""A fake NFS host for reachability tests: a network namespace joined to the host by a veth
pair, with addresses in 10.213.N.0/25 (created here, removed at teardown), plus an
``unreachable`` route for 10.213.N.128/25 so that "no route to host" is real, and helpers to
run a fake server inside the namespace (killed by PID).

Creating a netns makes ``/run/netns`` a shared bind mount that ``ip netns del`` leaves behind;
the fixture unmounts it again when it was the one to create it and nothing else uses it."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

from mount_utils import syscalls as sc
from dataclasses import dataclass, field

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_SCRIPT = os.path.join(HERE, "fake_nfs_server.py")
SERVER_READY_TIMEOUT = 10.0


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _is_mount_point(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@dataclass
class FakeNfsHost:
    netns: str
    host_if: str
    host_ip: str
    peer_ip: str        # the namespace's address, where fake servers listen
    silent_ip: str      # on the veth subnet but nobody has it: connects get no answer
    no_route_ip: str    # covered by an unreachable route: "no route to host" at once
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start_server(self, mode: str = "rpc", port: int = 2049) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, SERVER_SCRIPT,
             "--mode", mode, "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], SERVER_READY_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "READY":
            self.stop_server(proc)
            pytest.fail(f"fake NFS server did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}")
        return proc

    def stop_server(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # by PID: `ip netns exec` exec'd python in place
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        if proc in self.procs:
            self.procs.remove(proc)


@pytest.fixture(scope="session")
def nfs_host():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (`ip`) to build a network namespace")
    n = 100 + os.getpid() % 100
    tag = f"{os.getpid() % 100000}"
    netns, host_if, peer_if = f"vmr-nfs-{tag}", f"vmrh{tag}", f"vmrp{tag}"
    host_ip, peer_ip = f"10.213.{n}.1", f"10.213.{n}.2"
    host = FakeNfsHost(netns, host_if, host_ip, peer_ip, silent_ip=f"10.213.{n}.3",
                       no_route_ip=f"10.213.{n}.200")
    run_netns_existed = os.path.isdir("/run/netns")
    run_netns_was_mount = _is_mount_point("/run/netns")
    unreachable = f"10.213.{n}.128/25"
    created_route = False
    try:
        r = _run("ip", "netns", "add", netns, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _run("ip", "link", "set", peer_if, "netns", netns)
        _run("ip", "addr", "add", f"{host_ip}/25", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", netns, "addr", "add", f"{peer_ip}/25", "dev", peer_if)
        _run("ip", "-n", netns, "link", "set", peer_if, "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "route", "add", "unreachable", unreachable)
        created_route = True
        yield host
    finally:
        for proc in list(host.procs):
            host.stop_server(proc)
        if created_route:
            _run("ip", "route", "del", "unreachable", unreachable, check=False)
        _run("ip", "link", "del", host_if, check=False)
        _run("ip", "netns", "del", netns, check=False)
        if not run_netns_was_mount and _is_mount_point("/run/netns") and not os.listdir("/run/netns"):
            _run("umount", "/run/netns", check=False)
        if not run_netns_existed and os.path.isdir("/run/netns") and not _is_mount_point("/run/netns"):
            try:
                os.rmdir("/run/netns")
            except OSError:
                pass  # someone else's namespaces are in it


@pytest.fixture
def servers(nfs_host):
    """Fake servers started by one test are killed (by PID) when it ends."""
    started: list[subprocess.Popen] = []

    def start(mode: str = "rpc", port: int = 2049) -> subprocess.Popen:
        proc = nfs_host.start_server(mode, port)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            nfs_host.stop_server(proc)


#: How long teardown waits for threads blocked on the hung mount to see ENOTCONN and finish.
HUNG_RELEASE_WAIT = 10.0


@pytest.fixture
def hung_mount_at():
    """``hung_mount_at(path)`` mounts, on directory `path` (created), a real filesystem whose
    every stat blocks: a FUSE mount whose /dev/fuse fd nobody reads (the kernel waits forever
    for the INIT reply), which is how a dead NFS server looks to a process. Returns a
    ``release()`` that closes the fd, aborting the connection (blocked calls get ENOTCONN).
    At teardown every such mount is released and removed."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: cannot build a hung filesystem")
    made: list[tuple[str, dict]] = []

    def make(path: str):
        os.makedirs(path, exist_ok=True)
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            sc.sys_mount("vmr-hung", path, "fuse", sc.MS_NOSUID | sc.MS_NODEV,
                         f"fd={fd},rootmode=40000,user_id=0,group_id=0")
        except OSError as err:
            os.close(fd)
            pytest.skip(f"cannot mount a FUSE filesystem here: {err}")
        state = {"fd": fd}
        made.append((path, state))

        def release() -> None:
            if state["fd"] is not None:
                os.close(state["fd"])
                state["fd"] = None

        return release

    try:
        yield make
    finally:
        for path, state in made:
            if state["fd"] is not None:
                os.close(state["fd"])
                state["fd"] = None
        for path, _ in made:
            deadline = time.monotonic() + HUNG_RELEASE_WAIT
            while _is_mount_point(path) and time.monotonic() < deadline:
                try:
                    sc.sys_umount(path, 0)
                except OSError:
                    time.sleep(0.05)
            if _is_mount_point(path):
                sc.sys_umount(path, sc.MNT_DETACH)


@pytest.fixture
def hung_mount(tmp_path, hung_mount_at):
    """(path, release) of a hung mount at tmp_path/hung; see `hung_mount_at`."""
    path = str(tmp_path / "hung")
    return path, hung_mount_at(path)
