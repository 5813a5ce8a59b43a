"""Benchmark of the volumemanager daemon at N volumes: bring-up, teardown, reaction, idle, restart.

Run as root from the repository root::

    sudo .venv/bin/python bench/run.py [--n 100 --n 1000] [--mix tmpfs --mix hostpath] [--quick]

Each (mix, N) case runs the real daemon (``python -m volumemanager daemon``) as a subprocess
on a private root dir under one temp dir and measures, from the outside only (mountinfo,
/proc, the admin socket, a NOTIFY_SOCKET datagram socket):

* cold bring-up: manifests present at start -> all N mounted, from process start; and its
  floor, the same mkdir + mount(2) calls from a tight loop in a fresh Python process;
* teardown: all manifests removed -> no mount left under the root dir; floor: umount + rmdir;
* reaction latency: one manifest renamed into place -> its mount in mountinfo (p50/p99);
* steady state: daemon CPU seconds over a quiet window, and peak RSS (VmHWM);
* restart: SIGTERM, start again -> READY=1, and mount syscalls issued by the new process.

Numbers are printed (with the targets of issue 7 next to them) and written as JSON to
``bench/results/<timestamp>.json``; nothing is asserted. Whatever happens, the daemon is
stopped by PID, every mount under the temp dir is unmounted and the temp dir removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mount_utils import syscalls as sc  # noqa: E402
from mount_utils.mountinfo import MountInfoWatcher  # noqa: E402

MOUNTINFO = "/proc/self/mountinfo"
# How long to let a burst of mount events pile up before re-reading mountinfo while counting:
# re-reading a 1,000-line mountinfo per event would steal CPU from the daemon on 2 cores.
COUNT_COALESCE_SECONDS = 0.005
# Upper bounds for one phase; a case that exceeds them is reported as timed out, not hung.
BRINGUP_TIMEOUT_SECONDS = 600.0
READY_TIMEOUT_SECONDS = 120.0
# A trial whose mount has not appeared by then is counted as missed (and as this latency in the
# percentiles) instead of waiting for the daemon's slow full pass.
REACTION_TIMEOUT_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets from issue 7 (compared, never asserted).
TARGETS = {
    "bringup_ratio": 3.0,
    "teardown_ratio": 1.5,
    "reaction_p50_ms": 20.0,
    "reaction_p99_ms": 100.0,
    "idle_cpu_percent": 0.5,
    "rss_mb": 80.0,
    "restart_ready_s": 2.0,
    "restart_mount_syscalls": 0,
}

MIXES = ("tmpfs", "hostpath", "full")


class BenchError(RuntimeError):
    """A phase could not complete (timeout, daemon died); the message names the phase."""


# --- mount table -------------------------------------------------------------------------


def read_mountinfo_bytes() -> bytes:
    with open(MOUNTINFO, "rb") as f:
        return f.read()


def mounts_under(prefix: str) -> list[tuple[int, str]]:
    """(mount id, mount point) of every mount whose mount point is below `prefix`."""
    out = []
    p = prefix.rstrip("/") + "/"
    for line in read_mountinfo_bytes().decode(errors="surrogateescape").splitlines():
        parts = line.split(" ", 5)
        if len(parts) > 4 and parts[4].startswith(p):
            out.append((int(parts[0]), parts[4]))
    return out


def count_under(needle: bytes) -> int:
    """Mounts whose mount point starts with `needle` (b' /root/pods/'): a cheap byte count."""
    return read_mountinfo_bytes().count(needle)


def wait_count(needle: bytes, want: int, timeout: float, alive: Callable[[], bool] | None = None,
               what: str = "mounts") -> float:
    """Block until exactly `want` mounts match `needle`; return time.monotonic() when seen."""
    deadline = time.monotonic() + timeout
    with MountInfoWatcher() as w:
        while True:
            now = time.monotonic()
            if count_under(needle) == want:
                return now
            if now > deadline:
                raise BenchError(f"timed out after {timeout:g}s waiting for {want} {what} "
                                 f"(have {count_under(needle)})")
            if alive is not None and not alive():
                raise BenchError(f"daemon exited while waiting for {want} {what}")
            if w.wait(0.5):
                time.sleep(COUNT_COALESCE_SECONDS)


def unmount_all_under(prefix: str) -> list[str]:
    """Unmount everything below `prefix`, deepest/newest first; lazily if busy. Returns failures."""
    failed = []
    for _ in range(3):
        mounts = sorted(mounts_under(prefix), key=lambda m: m[0], reverse=True)
        if not mounts:
            return []
        failed = []
        for _mid, mp in mounts:
            try:
                sc.sys_umount(mp, sc.UMOUNT_NOFOLLOW)
            except OSError:
                try:
                    sc.sys_umount(mp, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
                except OSError as e:
                    failed.append(f"{mp}: {e.strerror}")
    return failed


# --- /proc accounting --------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    """`pid` and all its live descendants (by walking /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and its live descendants, plus the reaped children's (cutime+cstime)."""
    ticks = 0
    for i, p in enumerate(descendants(pid)):
        f = _stat_fields(p)
        if f is None:
            continue
        # stat fields 14..17 (utime stime cutime cstime) are at 11..14 here (we start at field 3).
        ticks += int(f[11]) + int(f[12])
        if i == 0:
            ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM of `pid`, sum of VmHWM over `pid` and its live descendants), in MiB."""
    values = []
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    values.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return (values[0] if values else 0.0), sum(values)


# --- the workload ------------------------------------------------------------------------


@dataclass
class Volume:
    pod_index: int
    name: str
    kind: str  # "tmpfs" | "hostpath"
    mount_path: str


@dataclass
class Layout:
    """Paths of one case; everything below `base` (one temp dir)."""

    base: Path
    root: Path = field(init=False)
    manifests: Path = field(init=False)
    registry: Path = field(init=False)
    socket: Path = field(init=False)
    notify: Path = field(init=False)
    hostpaths: Path = field(init=False)
    floor: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.manifests = self.base / "manifests"
        self.registry = self.base / "plugins_registry"
        self.socket = self.base / "vm.sock"
        self.notify = self.base / "notify.sock"
        self.hostpaths = self.base / "hostpaths"
        self.floor = self.base / "floor"
        for d in (self.manifests, self.registry, self.hostpaths, self.floor):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def pods_needle(self) -> bytes:
        return b" " + os.fsencode(str(self.root / "pods")) + b"/"


def pod_uid(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012d}"


def plan_volumes(layout: Layout, n: int, per_pod: int, mix: str) -> dict[int, list[Volume]]:
    """N volumes in pods of `per_pod`; the hostpath mix alternates tmpfs emptyDir / hostPath."""
    pods: dict[int, list[Volume]] = {}
    for i in range(n):
        p, j = divmod(i, per_pod)
        kind = "hostpath" if mix == "hostpath" and i % 2 else "tmpfs"
        plugin = "kubernetes.io~host-path" if kind == "hostpath" else "kubernetes.io~empty-dir"
        name = f"v{j}"
        mp = str(layout.root / "pods" / pod_uid(p) / "volumes" / plugin / name)
        pods.setdefault(p, []).append(Volume(p, name, kind, mp))
    return pods


def pod_manifest(layout: Layout, index: int, volumes: list[Volume], prefix: str = "p") -> str:
    lines = ["apiVersion: v1", "kind: Pod", "metadata:", f"  name: {prefix}{index:05d}", "  namespace: bench",
             f"  uid: {pod_uid(index)}", "spec:", "  volumes:"]
    for v in volumes:
        lines.append(f"    - name: {v.name}")
        if v.kind == "tmpfs":
            lines += ["      emptyDir:", "        medium: Memory", "        sizeLimit: 1Mi"]
        else:
            lines += ["      hostPath:", f"        path: {layout.hostpaths / f'{index}-{v.name}'}",
                      "        type: Directory"]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the floor (a tight loop in a fresh interpreter) -------------------------------------

FLOOR_CODE = r"""
import json, os, sys, time
t_imp = time.monotonic()
from mount_utils import syscalls as sc
from mount_utils.mounter import LinuxMounter
imported = time.monotonic() - t_imp
action, listing = sys.argv[1], sys.argv[2]
items = [line.split("\t") for line in open(listing).read().splitlines()]
m = LinuxMounter()
t0 = time.monotonic()
if action == "up":
    for kind, target, source in items:
        os.makedirs(target)
        if kind == "tmpfs":
            m.mount_tmpfs(target, 1 << 20)
        else:
            sc.sys_mount(source, target, None, sc.MS_BIND, None)
else:
    for kind, target, source in items:
        sc.sys_umount(target, sc.UMOUNT_NOFOLLOW)
        os.rmdir(target)
print(json.dumps({"loop_s": time.monotonic() - t0, "import_s": imported}))
"""


def run_floor(layout: Layout, pods: dict[int, list[Volume]], action: str) -> dict[str, float]:
    """The same mkdir+mount (or umount+rmdir) calls, in a fresh Python process: wall and loop time."""
    listing = layout.base / "floor-list.tsv"
    rows = []
    for p, vols in pods.items():
        for v in vols:
            target = str(layout.floor / "pods" / pod_uid(p) / "volumes" / v.kind / v.name)
            rows.append(f"{v.kind}\t{target}\t{layout.hostpaths / f'{p}-{v.name}'}")
    listing.write_text("\n".join(rows) + "\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", FLOOR_CODE, action, str(listing)], cwd=REPO,
                       capture_output=True, text=True, timeout=BRINGUP_TIMEOUT_SECONDS)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError(f"floor ({action}) failed: {r.stderr.strip()[-2000:]}")
    inner = json.loads(r.stdout.strip().splitlines()[-1])
    return {"process_s": wall, "loop_s": inner["loop_s"], "import_s": inner["import_s"]}


# --- the daemon --------------------------------------------------------------------------


class Daemon:
    """One daemon process; READY=1 is read from a datagram socket we bind as NOTIFY_SOCKET.

    The socket is drained on a thread for the daemon's whole life, as systemd does: a unix
    datagram socket queues only ``net.unix.max_dgram_qlen`` (10) messages, after which the
    daemon's next STATUS= send blocks.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None  # the daemon's own PID (under strace: strace's child)
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.notifications = 0
        self.socket_waits: list[float] = []  # seconds waited for a previous daemon's socket
        self._ready = threading.Event()
        self._notify: socket.socket | None = None
        self._drainer: threading.Thread | None = None
        self._log = None

    def command(self) -> list[str]:
        L = self.layout
        return [sys.executable, "-m", "volumemanager", "daemon", "--root-dir", str(L.root),
                "--socket", str(L.socket), "--manifest-dir", str(L.manifests),
                "--plugins-registry-dir", str(L.registry), "--metrics-address", "", "--node-name", "bench"]

    def start(self, strace_out: Path | None = None) -> None:
        self._wait_socket_free()
        if self.layout.notify.exists():
            self.layout.notify.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(self.layout.notify))
        self._notify.settimeout(0.2)
        self._ready.clear()
        self.ready_at = None
        self._drainer = threading.Thread(target=self._drain, args=(self._notify,), daemon=True)
        self._drainer.start()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.layout.notify))
        cmd = self.command()
        if strace_out is not None:
            cmd = ["strace", "-f", "-c", "-e", "trace=mount,umount2", "-o", str(strace_out), *cmd]
        self._log = open(self.layout.base / "daemon.log", "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if strace_out is not None:
            self.pid = self._traced_child()

    def _wait_socket_free(self, timeout: float = 10.0) -> None:
        """Wait until no previous daemon answers on the admin socket.

        Seen twice at N=100 after a restart under strace: the next daemon found the socket
        still answered and refused to start. Waiting here keeps one slow exit from failing
        the case; the wait is recorded so it is not hidden.
        """
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.layout.socket))
                except OSError:
                    break  # nobody listening (refused, or no socket file)
            if time.monotonic() > deadline:
                raise BenchError(f"a previous daemon still answers on {self.layout.socket} after {timeout:g}s")
            time.sleep(0.05)
        waited = time.monotonic() - t0
        if waited > 0.01:
            self.socket_waits.append(round(waited, 3))

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                msg = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return  # closed by stop()
            now = time.monotonic()
            self.notifications += 1
            if not self._ready.is_set() and b"READY=1" in msg.split(b"\n"):
                self.ready_at = now
                self._ready.set()

    def _traced_child(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.005)
        raise BenchError("strace did not start the daemon within 10s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> float:
        """Seconds from start to the READY=1 datagram."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if time.monotonic() > deadline:
                raise BenchError(f"no READY=1 within {timeout:g}s (log: {self.log_tail()})")
            if not self.alive():
                raise BenchError(f"daemon exited before READY=1 (log: {self.log_tail()})")
        assert self.ready_at is not None
        return self.ready_at - self.started_at

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> float | None:
        """SIGTERM the daemon (by PID) and wait; kill if it does not stop. Seconds to exit."""
        if self.proc is None:
            return None
        took = None
        if self.proc.poll() is None:
            t0 = time.monotonic()
            try:
                os.kill(self.pid or self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
                took = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.pid and self.pid != self.proc.pid:
            # strace's tracee can outlive strace for a moment: make sure it is gone (or a
            # zombie, whose sockets are closed) before anyone starts the next daemon.
            if not _gone(self.pid, timeout):
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _gone(self.pid, 10)
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._drainer is not None:
            self._drainer.join(2)
            self._drainer = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return took

    def log_tail(self) -> str:
        try:
            return (self.layout.base / "daemon.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""


def _gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` no longer exists or is a zombie; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = _stat_fields(pid)
        if f is None or f[0] in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


def parse_strace_counts(path: Path) -> dict[str, int]:
    """Call counts from ``strace -c`` output (the 'calls' column of each syscall row)."""
    counts: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return counts
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("mount", "umount2"):
            counts[parts[-1]] = int(parts[3])
    return counts


# --- one case ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def measure_case(base: Path, mix: str, n: int, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    layout = Layout(base)
    pods = plan_volumes(layout, n, args.volumes_per_pod, mix)
    for p, vols in pods.items():
        for v in vols:
            if v.kind == "hostpath":
                (layout.hostpaths / f"{p}-{v.name}").mkdir(exist_ok=True)
    needle = layout.pods_needle
    res: dict[str, Any] = {"mix": mix, "n": n, "pods": len(pods), "volumes_per_pod": args.volumes_per_pod,
                           "manifest_layout": "one file per pod"}
    daemon = Daemon(layout)
    try:
        # Floor first, on its own dir, so the daemon's numbers are not skewed by its mounts.
        say(f"[{mix} N={n}] floor bring-up / teardown")
        res["floor_up"] = run_floor(layout, pods, "up")
        res["floor_down"] = run_floor(layout, pods, "down")

        for p, vols in pods.items():
            write_atomically(layout.manifests / f"p{p:05d}.yaml", pod_manifest(layout, p, vols))
        say(f"[{mix} N={n}] cold bring-up")
        daemon.start()
        t_all = wait_count(needle, n, BRINGUP_TIMEOUT_SECONDS, daemon.alive, "mounts at cold start")
        bringup = t_all - daemon.started_at
        ready = daemon.wait_ready()
        res["bringup"] = {"all_mounted_s": bringup, "ready_s": ready,
                          "ratio_process": bringup / res["floor_up"]["process_s"],
                          "ratio_loop": bringup / res["floor_up"]["loop_s"]}

        # Steady state: nothing changes; the bench only sleeps.
        time.sleep(1.0)  # let start-up stragglers (stats collectors, GC) settle
        say(f"[{mix} N={n}] steady state {args.steady_seconds:g}s")
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.steady_seconds)
        c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        res["steady"] = {"window_s": t1 - t0, "cpu_s": c1 - c0, "cpu_percent": 100 * (c1 - c0) / (t1 - t0)}

        say(f"[{mix} N={n}] reaction latency x{args.trials}")
        res["reaction"] = measure_reaction(layout, daemon, args.trials, args.reaction_timeout)

        own, total = peak_rss_mb(daemon.pid)
        res["rss"] = {"daemon_vmhwm_mb": own, "with_children_vmhwm_mb": total}

        say(f"[{mix} N={n}] restart")
        res["restart"] = measure_restart(layout, daemon, n, args)

        say(f"[{mix} N={n}] teardown")
        names = sorted(layout.manifests.glob("*.yaml"))
        t0 = time.monotonic()
        for path in names:
            path.unlink()
        t_none = wait_count(needle, 0, BRINGUP_TIMEOUT_SECONDS, daemon.alive, "mounts left after removal")
        teardown = t_none - t0
        res["teardown"] = {"all_unmounted_s": teardown,
                           "ratio_process": teardown / res["floor_down"]["process_s"],
                           "ratio_loop": teardown / res["floor_down"]["loop_s"]}
    except BenchError as e:
        res["error"] = str(e)
        say(f"[{mix} N={n}] ERROR: {e}")
        if args.keep_logs_on_error:
            kept = args.out / f"daemon-{mix}-{n}-{os.getpid()}.log"
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(layout.base / "daemon.log", kept)
            res["daemon_log"] = str(kept)
    finally:
        daemon.stop()
        if daemon.socket_waits:
            res["waited_for_previous_daemon_socket_s"] = daemon.socket_waits
        failed = unmount_all_under(str(base))
        if failed:
            res["cleanup_failures"] = failed
    return res


def measure_reaction(layout: Layout, daemon: Daemon, trials: int, timeout: float) -> dict[str, Any]:
    """One extra pod with one tmpfs volume: rename into place -> mounted; remove -> unmounted.

    A trial not mounted within `timeout` counts as missed (with `timeout` as its latency, so a
    miss shows in p99); its manifest is removed and the next trial starts once nothing is left.
    """
    up, down, missed = [], [], []
    with MountInfoWatcher() as w:
        for k in range(trials):
            index = 900000 + k
            vol = Volume(index, "r", "tmpfs",
                         str(layout.root / "pods" / pod_uid(index) / "volumes" / "kubernetes.io~empty-dir" / "r"))
            path = layout.manifests / f"r{index}.yaml"
            tmp = layout.manifests / f".r{index}.yaml.tmp"
            tmp.write_text(pod_manifest(layout, index, [vol], prefix="r"))
            mark = b" " + os.fsencode(vol.mount_path) + b" "
            w.wait(0)  # re-arm: forget changes made before the trial
            t0 = time.monotonic()
            os.replace(tmp, path)
            seen = _wait_mark(w, mark, True, daemon, timeout)
            up.append((seen - t0) if seen is not None else timeout)
            if seen is None:
                missed.append(k)
            t0 = time.monotonic()
            path.unlink()
            gone = _wait_mark(w, mark, False, daemon, max(timeout, 30.0))
            if gone is None:
                raise BenchError(f"reaction trial {k}: {vol.mount_path} still mounted 30s after its manifest went")
            if seen is not None:
                down.append(gone - t0)
    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    return {"trials": trials, "missed": len(missed), "missed_trials": missed, "miss_timeout_s": timeout,
            "mount_p50_ms": percentile(ms(up), 50), "mount_p99_ms": percentile(ms(up), 99),
            "mount_max_ms": max(ms(up)),
            "unmount_p50_ms": percentile(ms(down), 50) if down else None,
            "unmount_p99_ms": percentile(ms(down), 99) if down else None}


def _wait_mark(w: MountInfoWatcher, mark: bytes, present: bool, daemon: Daemon, timeout: float) -> float | None:
    """time.monotonic() when `mark` is (or is no longer) in mountinfo; None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if (mark in read_mountinfo_bytes()) == present:
            return now
        if not daemon.alive():
            raise BenchError(f"reaction: daemon exited (log: {daemon.log_tail()[-600:]})")
        if now > deadline:
            return None
        w.wait(min(0.2, deadline - now + 0.001))


def measure_restart(layout: Layout, daemon: Daemon, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """SIGTERM with N mounted, start again -> READY; mount IDs must not change.

    With strace, one extra restart under ``strace -f -c`` counts mount/umount2 calls; READY
    is timed on a restart without strace (ptrace slows start-up several fold).
    """
    out: dict[str, Any] = {}
    before = sorted(mounts_under(str(layout.root)))
    out["stop_s"] = daemon.stop()
    if shutil.which("strace") and not args.no_strace:
        trace = layout.base / "strace.txt"
        daemon.start(strace_out=trace)
        out["ready_under_strace_s"] = daemon.wait_ready()
        time.sleep(0.5)  # a pass right after READY would still show up
        daemon.stop()
        counts = parse_strace_counts(trace)
        out["mount_syscalls"] = counts.get("mount", 0)
        out["umount_syscalls"] = counts.get("umount2", 0)
        out["syscalls_counted_by"] = "strace -f -c -e trace=mount,umount2"
    else:
        out["syscalls_counted_by"] = "mount IDs before/after (strace not available)"
    daemon.start()
    out["ready_s"] = daemon.wait_ready()
    after = sorted(mounts_under(str(layout.root)))
    out["mounts_before"] = len(before)
    out["mount_ids_unchanged"] = before == after
    if "mount_syscalls" not in out:
        out["mount_syscalls"] = len(set(after) - set(before))
    return out


# --- output ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"nproc": os.cpu_count(), "mem_total_mb": mem_kb // 1024, "kernel": platform.release(),
            "python": platform.python_version(), "commit": commit, "worktree_dirty": dirty}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}{unit}" if value < 10 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def _ok(value: Any, target: float, lower_is_better: bool = True) -> str:
    if value is None:
        return ""
    return "ok" if (value <= target if lower_is_better else value >= target) else "MISSED"


def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, str, str, str, str]] = [("case", "metric", "value", "target", "")]
    for r in results:
        case = f"{r['mix']} N={r['n']}"
        g = lambda *ks: _dig(r, ks)  # noqa: E731
        rows += [
            (case, "cold bring-up (all mounted)", _fmt(g("bringup", "all_mounted_s"), " s"), "", ""),
            ("", "  floor: process (interp+imports+loop)", _fmt(g("floor_up", "process_s"), " s"), "", ""),
            ("", "  floor: loop only", _fmt(g("floor_up", "loop_s"), " s"), "", ""),
            ("", "  ratio vs floor process", _fmt(g("bringup", "ratio_process"), "x"),
             f"<= {TARGETS['bringup_ratio']:g}x", _ok(g("bringup", "ratio_process"), TARGETS["bringup_ratio"])),
            ("", "  ratio vs floor loop", _fmt(g("bringup", "ratio_loop"), "x"), "", ""),
            ("", "  start -> READY", _fmt(g("bringup", "ready_s"), " s"), "", ""),
            ("", "teardown (all unmounted)", _fmt(g("teardown", "all_unmounted_s"), " s"), "", ""),
            ("", "  floor: process", _fmt(g("floor_down", "process_s"), " s"), "", ""),
            ("", "  floor: loop only", _fmt(g("floor_down", "loop_s"), " s"), "", ""),
            ("", "  ratio vs floor process", _fmt(g("teardown", "ratio_process"), "x"),
             f"<= {TARGETS['teardown_ratio']:g}x", _ok(g("teardown", "ratio_process"), TARGETS["teardown_ratio"])),
            ("", "  ratio vs floor loop", _fmt(g("teardown", "ratio_loop"), "x"), "", ""),
            ("", f"reaction: manifest -> mounted p50 (x{g('reaction', 'trials')})",
             _fmt(g("reaction", "mount_p50_ms"), " ms"), f"<= {TARGETS['reaction_p50_ms']:g} ms",
             _ok(g("reaction", "mount_p50_ms"), TARGETS["reaction_p50_ms"])),
            ("", "  p99", _fmt(g("reaction", "mount_p99_ms"), " ms"), f"<= {TARGETS['reaction_p99_ms']:g} ms",
             _ok(g("reaction", "mount_p99_ms"), TARGETS["reaction_p99_ms"])),
            ("", "  missed (not mounted within timeout)", _fmt(g("reaction", "missed")), "0",
             _ok(g("reaction", "missed"), 0)),
            ("", "  removed -> unmounted p50 / p99",
             f"{_fmt(g('reaction', 'unmount_p50_ms'))} / {_fmt(g('reaction', 'unmount_p99_ms'), ' ms')}", "", ""),
            ("", f"idle CPU over {_fmt(g('steady', 'window_s'), ' s')}", _fmt(g("steady", "cpu_percent"), " %"),
             f"<= {TARGETS['idle_cpu_percent']:g} %", _ok(g("steady", "cpu_percent"), TARGETS["idle_cpu_percent"])),
            ("", "peak RSS daemon+children (VmHWM)", _fmt(g("rss", "with_children_vmhwm_mb"), " MB"),
             f"<= {TARGETS['rss_mb']:g} MB", _ok(g("rss", "with_children_vmhwm_mb"), TARGETS["rss_mb"])),
            ("", "restart: SIGTERM -> exit", _fmt(g("restart", "stop_s"), " s"), "", ""),
            ("", "restart: start -> READY", _fmt(g("restart", "ready_s"), " s"),
             f"<= {TARGETS['restart_ready_s']:g} s", _ok(g("restart", "ready_s"), TARGETS["restart_ready_s"])),
            ("", "restart: mount syscalls", _fmt(g("restart", "mount_syscalls")), "0",
             _ok(g("restart", "mount_syscalls"), 0)),
            ("", "restart: umount2 syscalls", _fmt(g("restart", "umount_syscalls")), "", ""),
            ("", "restart: mount IDs unchanged", _fmt(g("restart", "mount_ids_unchanged")), "yes", ""),
        ]
        if "error" in r:
            rows.append(("", "ERROR (see below)", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in results:
        if "error" in r:
            lines.append(f"\nERROR in {r['mix']} N={r['n']}: {r['error'][:1500]}")
    return "\n".join(lines)


def _dig(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, action="append", help="volumes per case (repeatable; default 100 and 1000)")
    ap.add_argument("--mix", choices=MIXES, action="append",
                    help="tmpfs: emptyDir medium=Memory only; hostpath: half tmpfs emptyDir, half hostPath; "
                         "full: + local PVs on loop devices + CSI (not implemented yet, see bench/README.md). "
                         "Repeatable; default tmpfs and hostpath")
    ap.add_argument("--volumes-per-pod", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="steady-state window of 10 s instead of 60 s")
    ap.add_argument("--steady-seconds", type=float, help="steady-state window (overrides --quick)")
    ap.add_argument("--trials", type=int, default=100, help="reaction-latency trials (default 100)")
    ap.add_argument("--reaction-timeout", type=float, default=REACTION_TIMEOUT_SECONDS,
                    help="a reaction trial not mounted by then counts as missed (default %(default)s s)")
    ap.add_argument("--keep-logs-on-error", action="store_true",
                    help="copy the daemon log of a failed case next to the JSON")
    ap.add_argument("--no-strace", action="store_true", help="count mount syscalls by mount IDs only")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="directory for the JSON result")
    ap.add_argument("--tmp-dir", type=Path, default=None, help="parent of the bench's temp dir (default /tmp)")
    args = ap.parse_args(argv)
    args.n = args.n or [100, 1000]
    args.mix = args.mix or ["tmpfs", "hostpath"]
    if args.steady_seconds is None:
        args.steady_seconds = 10.0 if args.quick else 60.0
    if "full" in args.mix:
        ap.error("--mix full (local PVs on loop devices + CSI) is not implemented yet; see bench/README.md")
    if any(n < 1 for n in args.n) or args.volumes_per_pod < 1 or args.trials < 1:
        ap.error("--n, --volumes-per-pod and --trials must be >= 1")
    return args


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (it mounts); run it with sudo", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    top = Path(tempfile.mkdtemp(prefix="vm-bench-", dir=args.tmp_dir))
    started = time.time()
    host = machine()  # before the run: the commit being measured, not whatever is checked out later
    results: list[dict[str, Any]] = []
    try:
        for mix in args.mix:
            for n in args.n:
                case_dir = top / f"{mix}-{n}"
                case_dir.mkdir()
                results.append(measure_case(case_dir, mix, n, args, say))
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
    finally:
        failed = unmount_all_under(str(top))
        if failed:
            say(f"could not unmount under {top}: {failed}; leaving it in place")
        else:
            shutil.rmtree(top, ignore_errors=True)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "machine": host,
              "args": {"n": args.n, "mix": args.mix, "volumes_per_pod": args.volumes_per_pod,
                       "steady_seconds": args.steady_seconds, "trials": args.trials},
              "targets": TARGETS, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(f"volumemanager bench  commit {m['commit'][:12]}{' (dirty)' if m['worktree_dirty'] else ''}  "
          f"{m['nproc']} cpus  {m['mem_total_mb']} MB  kernel {m['kernel']}  python {m['python']}")
    print(table(results))
    print(f"\nJSON: {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
